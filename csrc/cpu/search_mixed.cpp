// The ISA-independent part of the mixed search (search_mixed.h): when to use it, the int8
// quantisation with its measured errors, and the row blocks with their fallback to the exact
// kernel. The integer kernel itself is in search_mixed_avx512vnni.cpp.
#include "search_mixed.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <atomic>
#include <vector>

namespace eae {
namespace cpu {

bool mixed_search_supported() {
#if defined(EAE_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

SearchMode search_mode_from_env() {
  const char* v = std::getenv("EAE_KERNELS_SEARCH");
  if (v != nullptr && std::strcmp(v, "exact") == 0) return SearchMode::Exact;
  if (v != nullptr && std::strcmp(v, "mixed") == 0) return SearchMode::Mixed;
  return SearchMode::Auto;
}

namespace {

// Where `auto` uses the mixed search. It has a fixed cost per call (quantisation, packing) and
// per row (the first panels, where every column is a candidate, and the exact refinement) that
// the 4x cheaper integer pass must repay: measured (one thread, Gaussian rows, k = 1 and 5) it
// breaks even around N d = 2^15 and gains >= 1.1x from N >= 1024, d >= 16, N d >= 2^16 on.
bool auto_prefers_mixed(int64_t n, int64_t d) { return d >= 16 && n >= 1024 && n * d >= 65536; }

constexpr int64_t kMaxMixedDim = 16384;  // keeps every int32 sum of the kernel in range
constexpr int64_t kMaxWild = 16;         // at most this many outlier rows are set aside
constexpr double kWildGap = 4.0;         // an outlier's largest |z - mu| exceeds 4x the others'

std::atomic<int64_t> stats_calls{0}, stats_mixed_blocks{0}, stats_exact_blocks{0};

int64_t grain_for_blocks(int64_t n, int64_t d) {
  const int64_t work = kMixedRowBlock * std::max<int64_t>(1, n * d / 32);
  return std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, work));
}

}  // namespace

bool build_mixed_data(const float* z, int64_t n, int64_t d, int64_t k, const ParallelFor& pfor,
                      MixedData* out) {
  const int64_t d2 = (d + 1) / 2 * 2;
  if (d > kMaxMixedDim || n * d2 >= (int64_t{1} << 31)) return false;

  // Centre: any fixed vector works (distances are translation-invariant). The coordinate-wise
  // median of a strided sample keeps the step small under large offsets and is not dragged
  // away by a few outliers (which the mean would be).
  std::vector<double> mu(static_cast<size_t>(d));
  const int64_t stride = std::max<int64_t>(1, n / 255);
  std::vector<double> sample;
  for (int64_t c = 0; c < d; ++c) {
    sample.clear();
    for (int64_t j = 0; j < n; j += stride) sample.push_back(z[j * d + c]);
    std::nth_element(sample.begin(), sample.begin() + sample.size() / 2, sample.end());
    mu[c] = sample[sample.size() / 2];
  }

  std::vector<double> row_max(static_cast<size_t>(n));
  pfor(n, std::max<int64_t>(1, (int64_t{1} << 16) / d), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double m = 0;
      for (int64_t c = 0; c < d; ++c) m = std::max(m, std::abs(z[j * d + c] - mu[c]));
      row_max[j] = m;
    }
  });
  const double x_max = *std::max_element(row_max.begin(), row_max.end());
  // All rows equal: nothing to prune. Keys that could overflow float (|z_i - z_j| <= 2 x_max):
  // the exact kernel's inf keys and their ties are left to it.
  if (!(x_max > 0) || !(static_cast<double>(d) * 4.0 * x_max * x_max < 0x1p126)) return false;

  // A few far outliers would set the step for everyone and widen every row's band. Rows beyond
  // kWildGap x the (kMaxWild + 1)-th largest row maximum are "wild": the step is set without them,
  // they never enter the integer pass as columns (every row re-measures them exactly instead),
  // and as query rows they are searched by the exact kernel.
  double x_scale = x_max;
  const int64_t max_wild = std::min<int64_t>(kMaxWild, (n - k - 2) / 2);
  if (max_wild > 0) {
    std::vector<double> top(row_max);
    std::nth_element(top.begin(), top.begin() + max_wild, top.end(), std::greater<double>());
    if (top[max_wild] > 0 && x_max > kWildGap * top[max_wild]) x_scale = kWildGap * top[max_wild];
  }
  MixedData& m = *out;
  m.wild.clear();
  if (x_scale < x_max)
    for (int64_t j = 0; j < n; ++j)
      if (row_max[j] > x_scale) m.wild.push_back(static_cast<int32_t>(j));

  // |q| <= qmax keeps |I_ij| <= 4 d qmax^2 and every partial sum of the kernel within int32.
  const double qmax = std::min(32767.0, std::floor(std::sqrt(2147483647.0 / (4.0 * d))));
  // The step, a float rounded up, so that |x / alpha| <= qmax (wild rows: clamped) and alpha * q
  // is exact in double.
  const double alpha = std::nextafter(static_cast<float>(x_scale / qmax), INFINITY);
  const double inv_alpha = 1.0 / alpha;

  // Quantise, measure each row's error, pack the panels and the query rows.
  const int64_t num_panels = (n + kMixedPanel - 1) / kMixedPanel;
  m.panels.assign(static_cast<size_t>(num_panels * kMixedPanel * d2), 0);
  m.ref_norm.assign(static_cast<size_t>(num_panels * kMixedPanel),
                    std::numeric_limits<int32_t>::max());  // padding columns: never candidates
  m.q.assign(static_cast<size_t>(n * d2), 0);
  m.norm.resize(static_cast<size_t>(n));
  m.delta.resize(static_cast<size_t>(n));
  m.reach.resize(static_cast<size_t>(n));
  pfor(n, std::max<int64_t>(1, (int64_t{1} << 16) / d), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      int16_t* col = m.panels.data() + (j / kMixedPanel) * kMixedPanel * d2 + (j % kMixedPanel) * 2;
      double err2 = 0, x2 = 0;
      int64_t sq = 0;
      for (int64_t c = 0; c < d; ++c) {
        // Any integer near x / alpha will do (the error is measured below): round half away
        // from zero by truncation, which needs no library call.
        const double x = z[j * d + c] - mu[c];
        const double t = x * inv_alpha;
        const double qd = std::min(qmax, std::max(-qmax, static_cast<double>(static_cast<int64_t>(t + (t < 0 ? -0.5 : 0.5)))));
        const int64_t q = static_cast<int64_t>(qd);
        const double e = x - alpha * qd;
        err2 += e * e;
        x2 += x * x;
        sq += q * q;
        col[(c / 2) * kMixedPanel * 2 + (c % 2)] = static_cast<int16_t>(q);
        m.q[j * d2 + c] = static_cast<int16_t>(q);
      }
      // delta_j bounds |(z_j - mu) - alpha q_j| in exact arithmetic. The computed x and e carry
      // one double rounding each (alpha * q is exact), so |e - e_computed| <= 2^-52 (|x| + |e|)
      // per coordinate; the sums of squares and the sqrt add relative (d + 2) 2^-53 < 2^-30.
      const double err = std::sqrt(err2), xn = std::sqrt(x2);
      m.delta[j] = (err + 0x1p-51 * (xn + err)) * (1.0 + 0x1p-30) + 0x1p-1000;
      m.norm[j] = static_cast<int32_t>(sq);
      m.ref_norm[j] = static_cast<int32_t>(sq);
    }
  });

  const double d_plus_2_u = static_cast<double>(d + 2) * 0x1p-24;
  MixedPlan& plan = m.plan;
  plan.n_ref = n;
  plan.d = d;
  plan.k = k;
  plan.d2 = d2;
  plan.ref_panels = m.panels.data();
  plan.ref_norm = m.ref_norm.data();
  plan.query_q = m.q.data();
  plan.query_norm = m.norm.data();
  plan.query_delta = m.delta.data();
  // Wild columns: zero in the panels and masked out of the integer pass; their own errors are
  // left out of delta_max (their pairs are always re-measured).
  m.live.assign(static_cast<size_t>(num_panels), ~uint64_t{0});
  if (n % kMixedPanel) m.live[num_panels - 1] = (uint64_t{1} << (n % kMixedPanel)) - 1;
  m.is_wild.assign(static_cast<size_t>(n), 0);
  for (const int32_t j : m.wild) {
    m.is_wild[j] = 1;
    m.live[j / kMixedPanel] &= ~(uint64_t{1} << (j % kMixedPanel));
    m.ref_norm[j] = std::numeric_limits<int32_t>::max();
    int16_t* col = m.panels.data() + (j / kMixedPanel) * kMixedPanel * d2 + (j % kMixedPanel) * 2;
    for (int64_t c = 0; c < d; ++c) col[(c / 2) * kMixedPanel * 2 + (c % 2)] = 0;
  }
  double delta_max = 0;
  for (int64_t j = 0; j < n; ++j)
    if (!m.is_wild[j]) delta_max = std::max(delta_max, m.delta[j]);
  plan.bound.alpha = alpha;
  plan.bound.delta_max = delta_max;
  plan.bound.grow = 1.0 / (1.0 - d_plus_2_u) * kBoundMargin;  // (1 + u)^m <= 1 / (1 - m u)
  plan.bound.shrink = (1.0 - d_plus_2_u) / kBoundMargin;      // (1 - u)^m >= 1 - m u
  plan.bound.underflow = static_cast<double>(d) * 0x1p-149;
  plan.reach_slope = mixed_fast_reach_slope(plan.bound);
  for (int64_t j = 0; j < n; ++j) m.reach[j] = mixed_fast_reach_offset(m.delta[j], plan.bound);
  plan.query_reach = m.reach.data();
  plan.ref_live = m.live.data();
  plan.ref_wild = m.wild.data();
  plan.num_wild = static_cast<int64_t>(m.wild.size());
  plan.query_wild = m.is_wild.data();
  plan.self_offset = 0;
  plan.capacity = 64 + 8 * k;  // legitimate lists stay far below this (about k + 5 at the end)
  plan.query_rows = z;
  plan.ref_rows = z;
  return true;
}

bool knn_search_mixed(const SearchArgs<float>& args, const SearchKernel<float>& exact,
                      RowRange rows, const ParallelFor& pfor) {
  const int64_t n = args.n, d = args.d, k = args.k;
  const SearchMode mode = search_mode_from_env();
  if (args.norm != Norm::L2 || mode == SearchMode::Exact) return false;
  if (mode == SearchMode::Auto && !auto_prefers_mixed(n, d)) return false;
  // The refinement reproduces the exact kernel's subtract + FMA; the portable kernel rounds the
  // product separately (no FMA), so it keeps its own search.
  if (!mixed_search_supported() || std::strcmp(exact.name, "generic") == 0) return false;
  for (int64_t j = 0; j < n; ++j)
    if (!args.finite[j]) return false;  // NaN keys: the exact kernel's rules apply
  MixedData data;
  if (!build_mixed_data(args.queries, n, d, k, pfor, &data)) return false;
  const MixedPlan& plan = data.plan;

  const int64_t num_blocks = (rows.end - rows.begin + kMixedRowBlock - 1) / kMixedRowBlock;
  pfor(num_blocks, grain_for_blocks(n, d), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> cand(static_cast<size_t>(kMixedRowBlock * plan.capacity));
    std::vector<int32_t> cand_y(cand.size());
    std::vector<int32_t> approx_top(static_cast<size_t>(kMixedRowBlock * k));
    int64_t exact_here = 0;  // blocks that fell back
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = rows.begin + blk * kMixedRowBlock;
      const int64_t r1 = std::min(rows.end, r0 + kMixedRowBlock);
      float* keys = args.keys + (r0 - args.first_row) * k;
      int64_t* idx = args.idx + (r0 - args.first_row) * k;
      const MixedBlock block{r0, r1 - r0, cand.data(), cand_y.data(), approx_top.data(), keys, idx};
      // After two blocks that fell back, the data is taken to be too clustered for the integer
      // pass: the rest of this range goes straight to the exact kernel, so that such data costs
      // at most two partial integer passes per thread over the exact search.
#if defined(EAE_HAVE_X86_KERNELS)
      if (exact_here < 2 && avx512vnni::mixed_search_block(plan, block)) {
        for (int64_t i = r0; i < r1; ++i)  // outlier query rows (skipped by the integer pass)
          if (plan.query_wild[i]) exact.search_rows(args, i, i + 1);
        continue;
      }
#endif
      ++exact_here;
      exact.search_rows(args, r0, r1);
      stats_exact_blocks.fetch_add(1, std::memory_order_relaxed);
    }
    stats_mixed_blocks.fetch_add((end - begin) - exact_here, std::memory_order_relaxed);
  });
  stats_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

MixedStats mixed_search_stats() {
  return {stats_calls.load(), stats_mixed_blocks.load(), stats_exact_blocks.load()};
}

}  // namespace cpu
}  // namespace eae
