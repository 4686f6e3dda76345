// The ISA-independent part of the mixed search (search_mixed.h): when to use it, the 16-bit
// quantisation with its measured errors (one centre and step for both sets of a cross search),
// and the row blocks with their fallback to the exact kernel. The integer kernel itself is in search_mixed_avx512vnni.cpp.
#include "search_mixed.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>
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

namespace {

// The coordinate-wise median of a strided sample (about 64 rows) of the rows of both sets: any fixed centre
// works (distances are translation-invariant), and the median keeps the step small under large
// offsets without being dragged away by a few outliers (which the mean would be).
// The sampled rows are copied coordinate-major first: reading one coordinate of rows spread
// over the whole input, coordinate after coordinate, was a visible cost at large d.
std::vector<double> centre(const float* x, int64_t nx, const float* y, int64_t ny, int64_t d) {
  std::vector<const float*> rows;
  for (const auto& [set, n] : {std::make_pair(x, nx), std::make_pair(y, ny)})
    for (int64_t j = 0; j < n; j += std::max<int64_t>(1, n / 63)) rows.push_back(set + j * d);
  const int64_t s = static_cast<int64_t>(rows.size());
  std::vector<float> sample(static_cast<size_t>(s * d));  // sample[c * s + r] = rows[r][c]
  for (int64_t r = 0; r < s; ++r)
    for (int64_t c = 0; c < d; ++c) sample[c * s + r] = rows[r][c];
  std::vector<double> mu(static_cast<size_t>(d));
  for (int64_t c = 0; c < d; ++c) {
    float* column = sample.data() + c * s;
    std::nth_element(column, column + s / 2, column + s);
    mu[c] = column[s / 2];
  }
  return mu;
}

// max_c |z_jc - mu_c| of every row.
std::vector<double> row_maxima(const float* z, int64_t n, int64_t d, const std::vector<double>& mu,
                               const ParallelFor& pfor) {
  std::vector<double> row_max(static_cast<size_t>(n));
  pfor(n, std::max<int64_t>(1, (int64_t{1} << 16) / d), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double m[4] = {0, 0, 0, 0};  // four running maxima: no chain of dependent instructions
      for (int64_t c = 0; c < d; ++c) m[c & 3] = std::max(m[c & 3], std::abs(z[j * d + c] - mu[c]));
      row_max[j] = std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
    }
  });
  return row_max;
}

// q_j = round((z_j - mu) / alpha) clamped to +-qmax, row-major with d2 coordinates (zero padded),
// with |q_j|^2 and the measured error delta_j of every row.
void quantise_rows(const float* z, int64_t n, int64_t d, int64_t d2, const std::vector<double>& mu,
                   double alpha, double qmax, const ParallelFor& pfor, std::vector<int16_t>* q_out,
                   std::vector<int32_t>* norm_out, std::vector<double>* delta_out) {
  const double inv_alpha = 1.0 / alpha;
  q_out->assign(static_cast<size_t>(n * d2), 0);
  norm_out->resize(static_cast<size_t>(n));
  delta_out->resize(static_cast<size_t>(n));
  int16_t* q_rows = q_out->data();
  int32_t* norms = norm_out->data();
  double* deltas = delta_out->data();
  const double* centre = mu.data();
  // delta_j bounds |(z_j - mu) - alpha q_j| in exact arithmetic. The computed x and e carry one
  // double rounding each (alpha * q is exact), so |e - e_computed| <= 2^-52 (|x| + |e|) per
  // coordinate; the sums of squares (in any order, fused or not) and the sqrt add relative
  // (d + 2) 2^-53 < 2^-30.
  auto finish_row = [&](int64_t j, double err2, double x2, int64_t sq) {
    const double err = std::sqrt(err2), xn = std::sqrt(x2);
    deltas[j] = (err + 0x1p-51 * (xn + err)) * (1.0 + 0x1p-30) + 0x1p-1000;
    norms[j] = static_cast<int32_t>(sq);
  };
  const bool vector = mixed_search_supported();  // AVX-512 (the portable loop below otherwise)
  pfor(n, std::max<int64_t>(1, (int64_t{1} << 16) / d), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float* row = z + j * d;
      int16_t* q_row = q_rows + j * d2;
      int64_t sq = 0;
      double err2 = 0, x2 = 0;
#if defined(EAE_HAVE_X86_KERNELS)
      if (vector) {
        avx512vnni::quantise_row(row, centre, d, alpha, qmax, q_row, &err2, &x2, &sq);
        finish_row(j, err2, x2, sq);
        continue;
      }
#endif
      // Any integer near x / alpha will do (the error is measured below): round half away from
      // zero by truncation, which needs no library call. Returns x, and e = x - alpha q.
      auto quantise = [&](int64_t c, double* e) {
        const double x = row[c] - centre[c];
        const double t = x * inv_alpha;
        const double qd = std::min(qmax, std::max(-qmax, static_cast<double>(static_cast<int64_t>(t + (t < 0 ? -0.5 : 0.5)))));
        const int64_t q = static_cast<int64_t>(qd);
        *e = x - alpha * qd;
        sq += q * q;
        q_row[c] = static_cast<int16_t>(q);
        return x;
      };
      // Four partial sums of each square (the bound above holds for any order of summation):
      // one chain of dependent additions would set the pace of this loop.
      double err2_part[4] = {0, 0, 0, 0}, x2_part[4] = {0, 0, 0, 0};
      int64_t c = 0;
      for (; c + 4 <= d; c += 4) {
        double e[4], x[4];
        for (int l = 0; l < 4; ++l) x[l] = quantise(c + l, &e[l]);
        for (int l = 0; l < 4; ++l) {
          err2_part[l] += e[l] * e[l];
          x2_part[l] += x[l] * x[l];
        }
      }
      for (; c < d; ++c) {
        double e;
        const double x = quantise(c, &e);
        err2_part[0] += e * e;
        x2_part[0] += x * x;
      }
      err2 = (err2_part[0] + err2_part[1]) + (err2_part[2] + err2_part[3]);
      x2 = (x2_part[0] + x2_part[1]) + (x2_part[2] + x2_part[3]);
      finish_row(j, err2, x2, sq);
    }
  });
}

}  // namespace

bool build_mixed_data(const float* x, int64_t nx, const float* y, int64_t ny, int64_t d, int64_t k,
                      const ParallelFor& pfor, MixedData* out) {
  const bool self = (y == nullptr);
  const float* ref = self ? x : y;
  const int64_t n = self ? nx : ny;  // reference rows
  const int64_t d2 = (d + 1) / 2 * 2;
  if (d > kMaxMixedDim || n * d2 >= (int64_t{1} << 31) || nx * d2 >= (int64_t{1} << 31)) return false;

  const std::vector<double> mu = centre(x, nx, y, self ? 0 : ny, d);
  const std::vector<double> max_x = row_maxima(x, nx, d, mu, pfor);
  const std::vector<double> max_y = self ? std::vector<double>() : row_maxima(y, ny, d, mu, pfor);
  std::vector<double> all(max_x);
  all.insert(all.end(), max_y.begin(), max_y.end());
  const double x_max = *std::max_element(all.begin(), all.end());
  // All rows equal: nothing to prune. Keys that could overflow float (|z_i - z_j| <= 2 x_max):
  // the exact kernel's inf keys and their ties are left to it.
  if (!(x_max > 0) || !(static_cast<double>(d) * 4.0 * x_max * x_max < 0x1p126)) return false;

  // A few far outliers would set the step for everyone and widen every row's band. Rows (of
  // either set) beyond kWildGap x the (kMaxWild + 1)-th largest row maximum are "wild": the step
  // is set without them; as reference rows they never enter the integer pass (every query row
  // re-measures them exactly instead), as query rows they are searched by the exact kernel.
  double x_scale = x_max;
  const int64_t max_wild = std::min<int64_t>(kMaxWild, (n - k - 2) / 2);
  if (max_wild > 0) {
    std::nth_element(all.begin(), all.begin() + max_wild, all.end(), std::greater<double>());
    if (all[max_wild] > 0 && x_max > kWildGap * all[max_wild]) x_scale = kWildGap * all[max_wild];
  }
  MixedData& m = *out;
  const std::vector<double>& max_ref = self ? max_x : max_y;
  m.wild.clear();
  for (int64_t j = 0; j < n; ++j)
    if (max_ref[j] > x_scale) m.wild.push_back(static_cast<int32_t>(j));
  m.is_wild.resize(static_cast<size_t>(nx));
  for (int64_t i = 0; i < nx; ++i) m.is_wild[i] = max_x[i] > x_scale;

  // |q| <= qmax keeps |I_ij| <= 4 d qmax^2 and every partial sum of the kernel within int32.
  const double qmax = std::min(32767.0, std::floor(std::sqrt(2147483647.0 / (4.0 * d))));
  // The step, a float rounded up, so that |x / alpha| <= qmax (wild rows: clamped) and alpha * q
  // is exact in double.
  const double alpha = std::nextafter(static_cast<float>(x_scale / qmax), INFINITY);

  std::vector<int32_t> y_sq;
  quantise_rows(x, nx, d, d2, mu, alpha, qmax, pfor, &m.q, &m.norm, &m.delta);
  if (!self) quantise_rows(y, ny, d, d2, mu, alpha, qmax, pfor, &m.ref_q, &y_sq, &m.ref_delta);
  // The self search's reference rows are its query rows (no copies).
  const int16_t* ref_q = self ? m.q.data() : m.ref_q.data();
  const int32_t* ref_sq = self ? m.norm.data() : y_sq.data();
  const double* ref_delta = self ? m.delta.data() : m.ref_delta.data();

  // The reference rows packed in panels: wild columns are zero in the panels, masked out of the
  // integer pass and left out of delta_max (their pairs are always re-measured); padding columns
  // have norm INT32_MAX and are never candidates.
  const int64_t num_panels = (n + kMixedPanel - 1) / kMixedPanel;
  std::vector<uint8_t> ref_wild(static_cast<size_t>(n), 0);
  for (const int32_t j : m.wild) ref_wild[j] = 1;
  m.panels.assign(static_cast<size_t>(num_panels * kMixedPanel * d2), 0);
  m.ref_norm.assign(static_cast<size_t>(num_panels * kMixedPanel), std::numeric_limits<int32_t>::max());
  m.live.assign(static_cast<size_t>(num_panels), ~uint64_t{0});
  if (n % kMixedPanel) m.live[num_panels - 1] = (uint64_t{1} << (n % kMixedPanel)) - 1;
  pfor(num_panels, std::max<int64_t>(1, (int64_t{1} << 16) / (kMixedPanel * d)), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin * kMixedPanel; j < std::min(n, end * kMixedPanel); ++j) {
      if (ref_wild[j]) continue;
      int16_t* col = m.panels.data() + (j / kMixedPanel) * kMixedPanel * d2 + (j % kMixedPanel) * 2;
      for (int64_t c = 0; c < d; ++c) col[(c / 2) * kMixedPanel * 2 + (c % 2)] = ref_q[j * d2 + c];
      m.ref_norm[j] = ref_sq[j];
    }
  });
  double delta_max = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (ref_wild[j]) m.live[j / kMixedPanel] &= ~(uint64_t{1} << (j % kMixedPanel));
    else delta_max = std::max(delta_max, ref_delta[j]);
  }

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
  plan.bound.alpha = alpha;
  plan.bound.delta_max = delta_max;
  plan.bound.grow = 1.0 / (1.0 - d_plus_2_u) * kBoundMargin;  // (1 + u)^m <= 1 / (1 - m u)
  plan.bound.shrink = (1.0 - d_plus_2_u) / kBoundMargin;      // (1 - u)^m >= 1 - m u
  plan.bound.underflow = static_cast<double>(d) * 0x1p-149;
  plan.reach_slope = mixed_fast_reach_slope(plan.bound);
  m.reach.resize(static_cast<size_t>(nx));
  for (int64_t i = 0; i < nx; ++i) m.reach[i] = mixed_fast_reach_offset(m.delta[i], plan.bound);
  plan.query_reach = m.reach.data();
  plan.ref_live = m.live.data();
  plan.ref_wild = m.wild.data();
  plan.num_wild = static_cast<int64_t>(m.wild.size());
  plan.query_wild = m.is_wild.data();
  plan.self_offset = self ? 0 : -1;
  plan.capacity = 64 + 8 * k;  // legitimate lists stay far below this (about k + 5 at the end)
  plan.query_rows = x;
  plan.ref_rows = ref;
  return true;
}

bool knn_search_mixed(const SearchArgs<float>& args, const float* reference_rows,
                      const SearchKernel<float>& exact, RowRange rows, const ParallelFor& pfor) {
  const int64_t n = args.n, d = args.d, k = args.k;
  const bool self = args.exclude_self;
  const SearchMode mode = search_mode_from_env();
  if (args.norm != Norm::L2 || mode == SearchMode::Exact) return false;
  // Self: the rule as measured; a separate set: the same rule on the smaller of the two sets.
  if (mode == SearchMode::Auto && !auto_prefers_mixed(self ? n : std::min(n, rows.end - rows.begin), d))
    return false;
  // The refinement reproduces the exact kernel's subtract + FMA; the portable kernel rounds the
  // product separately (no FMA), so it keeps its own search.
  if (!mixed_search_supported() || std::strcmp(exact.name, "generic") == 0) return false;
  // The query rows quantised: all rows in the self case (they are the reference rows too), the
  // range's rows otherwise. query = row - query_base.
  const int64_t query_base = self ? 0 : rows.begin;
  const int64_t num_queries = self ? n : rows.end - rows.begin;
  for (int64_t j = 0; j < n; ++j)
    if (!args.finite[j]) return false;  // NaN keys: the exact kernel's rules apply
  for (int64_t i = query_base; i < query_base + num_queries; ++i)
    if (!args.query_finite[i]) return false;
  MixedData data;
  if (!build_mixed_data(args.queries + query_base * d, num_queries, self ? nullptr : reference_rows, n, d, k,
                        pfor, &data))
    return false;
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
      const MixedBlock block{r0 - query_base, r1 - r0, cand.data(), cand_y.data(), approx_top.data(), keys, idx};
      // After two blocks that fell back, the data is taken to be too clustered for the integer
      // pass: the rest of this range goes straight to the exact kernel, so that such data costs
      // at most two partial integer passes per thread over the exact search.
#if defined(EAE_HAVE_X86_KERNELS)
      if (exact_here < 2 && avx512vnni::mixed_search_block(plan, block)) {
        for (int64_t i = r0; i < r1; ++i)  // outlier query rows (skipped by the integer pass)
          if (plan.query_wild[i - query_base]) exact.search_rows(args, i, i + 1);
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
