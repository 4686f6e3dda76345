// The KSG mutual-information estimator on the CPU: pass 1 (joint k-NN, max-norm) reuses the
// search of kl_cpu.cpp on the concatenated rows [x, y]; pass 2 is the range-count kernel of
// ksg_count_impl.h, compiled per instruction set and chosen with the search's ISA switch.
#include "ksg_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "../core/kl_math.h"

namespace eae {
namespace cpu {

// Everything in the anonymous namespace has internal linkage: the per-ISA copies of the count
// kernel can never be merged with each other by the linker.
namespace {

constexpr int64_t kCountRowBlock = 64;  // rows whose data stay in L1 while the panels stream by
constexpr int kCountRows = 4;           // register tile: rows ...
constexpr int kCountCols = 2;           // ... x vectors of columns
constexpr int64_t kMaxSweepSearchDim = 2;  // joint dimensions up to which pass 1 sweeps (>= 2)
// Rows per parallel task of the sweep's cheap per-row loops (binary searches, window counts; the
// k-NN walk takes a quarter): a task of less work costs more in thread wake-ups than it saves,
// most of all on a loaded machine.
constexpr int64_t kMinSweepRows = 8192;

template <class T>
struct CountArgs {
  const T* rows;    // (n, d) row-major
  const T* panels;  // the same rows packed column-panel-major, padded with +inf
  int64_t n, d;
  const T* radius;  // (n,)
};

template <class T>
struct CountKernel {
  int64_t panel_width;
  // counts[i] for the rows [begin, end)
  void (*count_rows)(const CountArgs<T>& args, bool inclusive, int64_t begin, int64_t end,
                     int64_t* counts);
};

#define EAE_KSG_ISA generic
#define EAE_KSG_VECTOR_BYTES 16
#include "ksg_count_impl.h"
#undef EAE_KSG_ISA
#undef EAE_KSG_VECTOR_BYTES

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EAE_KSG_X86 1
#if defined(__clang__)
#define EAE_KSG_TARGET_BEGIN(isa) _Pragma(EAE_KSG_STR(clang attribute push(__attribute__((target(isa))), apply_to = function)))
#define EAE_KSG_TARGET_END _Pragma("clang attribute pop")
#else
#define EAE_KSG_TARGET_BEGIN(isa) _Pragma("GCC push_options") _Pragma(EAE_KSG_STR(GCC target(isa)))
#define EAE_KSG_TARGET_END _Pragma("GCC pop_options")
#endif
#define EAE_KSG_STR(x) #x

EAE_KSG_TARGET_BEGIN("avx2,fma")
#define EAE_KSG_ISA avx2
#define EAE_KSG_VECTOR_BYTES 32
#include "ksg_count_impl.h"
#undef EAE_KSG_ISA
#undef EAE_KSG_VECTOR_BYTES
EAE_KSG_TARGET_END

EAE_KSG_TARGET_BEGIN("avx512f,avx512dq,avx512vl,avx2,fma")
#define EAE_KSG_ISA avx512
#define EAE_KSG_VECTOR_BYTES 64
#include "ksg_count_impl.h"
#undef EAE_KSG_ISA
#undef EAE_KSG_VECTOR_BYTES
EAE_KSG_TARGET_END
#endif

// The count kernel of the instruction set the search uses (kl_cpu.h's isa(), which
// EAE_KERNELS_CPU_ISA and set_isa() control).
template <class T>
const CountKernel<T>* count_kernel();

template <>
const CountKernel<float>* count_kernel<float>() {
#if defined(EAE_KSG_X86)
  if (std::strcmp(isa(), "avx512") == 0) return avx512::count_kernel_f32();
  if (std::strcmp(isa(), "avx2") == 0) return avx2::count_kernel_f32();
#endif
  return generic::count_kernel_f32();
}

template <>
const CountKernel<double>* count_kernel<double>() {
#if defined(EAE_KSG_X86)
  if (std::strcmp(isa(), "avx512") == 0) return avx512::count_kernel_f64();
  if (std::strcmp(isa(), "avx2") == 0) return avx2::count_kernel_f64();
#endif
  return generic::count_kernel_f64();
}

// max_c |a_c - b_c|, the same floating-point operations as both kernels (|a - b| = |b - a|).
template <class T>
T linf_distance(const T* a, const T* b, int64_t d) {
  T best = 0;
  for (int64_t c = 0; c < d; ++c) {
    const T v = std::abs(a[c] - b[c]);
    best = v > best ? v : best;
  }
  return best;
}

template <class T>
bool all_finite(const T* v, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

// The rows in ascending order of their first coordinate (ties by index), and those values.
template <class T>
struct FirstCoordinateOrder {
  std::vector<int64_t> row;  // row[p]: the row at position p
  std::vector<T> first;      // first[p] = z[row[p]][0], ascending
};

template <class T>
FirstCoordinateOrder<T> sort_by_first_coordinate(const T* z, int64_t n, int64_t d) {
  std::vector<std::pair<T, int64_t>> pairs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pairs[i] = {z[i * d], i};
  std::sort(pairs.begin(), pairs.end());  // by value, then index
  FirstCoordinateOrder<T> order;
  order.row.resize(static_cast<size_t>(n));
  order.first.resize(static_cast<size_t>(n));
  for (int64_t p = 0; p < n; ++p) {
    order.first[p] = pairs[p].first;
    order.row[p] = pairs[p].second;
  }
  return order;
}

// Exact k-NN in the max-norm (d >= 2) by a two-level sweep. The first-coordinate order is cut
// into slabs of consecutive positions; inside a slab the rows are sorted by their second
// coordinate. From each row: walk its own slab, then the slabs outwards (nearest in the first
// coordinate first) until the first-coordinate gap to the next slab exceeds the k-th key; inside
// a slab, walk outwards from the row's second coordinate until that gap exceeds the k-th key.
// The gaps fl(b - a) are exact lower bounds of the distance (fl is monotone) and a walk stops only
// when strictly farther, so the lists are those of the tiled search: same keys, same lower-index
// tie rule (topk_insert orders by (key, index) whatever the visiting order).
template <class T>
void knn_sweep_linf(const T* z, int64_t n, int64_t d, int64_t k, T* keys, int64_t* idx,
                    const ParallelFor& pfor) {
  const FirstCoordinateOrder<T> order = sort_by_first_coordinate(z, n, d);
  const T* first = order.first.data();
  // Slabs of about half the rows of a row's first-coordinate strip (~sqrt(n k) in 2-D); measured
  // at dx = dy = 1: 1/4 to 2 times that are within the noise, 1/8 and less are slower.
  const int64_t slab = std::max<int64_t>(16, static_cast<int64_t>(std::sqrt(double(n) * double(k)) / 2));
  const int64_t num_slabs = (n + slab - 1) / slab;
  // In slab order: row index, second coordinate, and the row's values (for locality).
  std::vector<int64_t> srow(static_cast<size_t>(n));
  std::vector<T> second(static_cast<size_t>(n)), zs(static_cast<size_t>(n * d));
  std::vector<int64_t> where(static_cast<size_t>(n));  // row -> its slab
  pfor(num_slabs, std::max<int64_t>(1, kMinSweepRows / slab), [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t a = s * slab, b = std::min(n, a + slab);
      for (int64_t q = a; q < b; ++q) srow[q] = order.row[q];
      std::sort(srow.begin() + a, srow.begin() + b,
                [&](int64_t u, int64_t v) { return z[u * d + 1] < z[v * d + 1] || (z[u * d + 1] == z[v * d + 1] && u < v); });
      for (int64_t q = a; q < b; ++q) {
        second[q] = z[srow[q] * d + 1];
        std::copy(z + srow[q] * d, z + (srow[q] + 1) * d, zs.data() + q * d);
        where[srow[q]] = s;
      }
    }
  });

  pfor(n, kMinSweepRows / 4, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t i = order.row[p];
      T* key = keys + i * k;
      int64_t* id = idx + i * k;
      std::fill(key, key + k, std::numeric_limits<T>::infinity());
      std::fill(id, id + k, n);  // empty slot: (+inf, n)
      const T* zi = z + i * d;
      const T si = first[p], ti = zi[1];
      auto full = [&] { return id[k - 1] != n; };
      auto walk_slab = [&](int64_t s) {
        const int64_t a = s * slab, b = std::min(n, a + slab);
        const int64_t t = std::lower_bound(second.begin() + a, second.begin() + b, ti) - second.begin();
        int64_t lo = t - 1, hi = t;
        while (lo >= a || hi < b) {
          const bool take_lo = lo >= a && (hi >= b || ti - second[lo] <= second[hi] - ti);
          const T gap = take_lo ? ti - second[lo] : second[hi] - ti;
          if (full() && gap > key[k - 1]) break;
          const int64_t q = take_lo ? lo-- : hi++;
          if (srow[q] != i) topk_insert(key, id, static_cast<int>(k), linf_distance(zi, zs.data() + q * d, d), srow[q]);
        }
      };
      const int64_t home = where[i];
      walk_slab(home);
      int64_t lo = home - 1, hi = home + 1;
      while (lo >= 0 || hi < num_slabs) {
        // first-coordinate gap to the nearest position of the next slab on each side
        const T gap_lo = lo >= 0 ? si - first[(lo + 1) * slab - 1] : T(0);
        const T gap_hi = hi < num_slabs ? first[hi * slab] - si : T(0);
        const bool take_lo = lo >= 0 && (hi >= num_slabs || gap_lo <= gap_hi);
        if (full() && (take_lo ? gap_lo : gap_hi) > key[k - 1]) break;  // every slab further out is farther
        walk_slab(take_lo ? lo-- : hi++);
      }
    }
  });
}

// For every row, the window [lo, hi) of positions in the first-coordinate order whose gap to the
// row's first coordinate is within its radius: a superset of the rows within the radius (all of
// them when d = 1). Binary search on the exact predicate, which is monotone on each side.
template <class T>
void sweep_windows(const FirstCoordinateOrder<T>& order, const T* radius, bool inclusive,
                   int64_t* lo, int64_t* hi, const ParallelFor& pfor) {
  const int64_t n = static_cast<int64_t>(order.row.size());
  const T* first = order.first.data();
  pfor(n, kMinSweepRows, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T r = radius[order.row[p]];
      const T si = first[p];
      auto within = [&](T gap) { return inclusive ? gap <= r : gap < r; };
      if (!within(T(0))) { lo[p] = hi[p] = p; continue; }  // not even the row itself
      // Galloping from p (windows are usually short), then binary search: first position in
      // [0, p] within, and first position in (p, n) not within.
      int64_t step = 1;
      while (p - step >= 0 && within(si - first[p - step])) step *= 2;
      int64_t a = std::max<int64_t>(0, p - step + 1), b = p - step / 2;
      while (a < b) {
        const int64_t m = a + (b - a) / 2;
        if (within(si - first[m])) b = m; else a = m + 1;
      }
      lo[p] = a;
      step = 1;
      while (p + step < n && within(first[p + step] - si)) step *= 2;
      a = p + step / 2 + 1, b = std::min(n, p + step);
      while (a < b) {
        const int64_t m = a + (b - a) / 2;
        if (within(first[m] - si)) a = m + 1; else b = m;
      }
      hi[p] = a;
    }
  });
}

}  // namespace

namespace {

template <class T>
void range_count_tiled(const T* z, int64_t n, int64_t d, const T* radius, bool inclusive,
                       int64_t* counts, const ParallelFor& pfor) {
  const CountKernel<T>* kernel = count_kernel<T>();
  const int64_t pw = kernel->panel_width;
  const int64_t num_panels = (n + pw - 1) / pw;
  // panels[p][c][w] = z[p*pw + w][c]; columns past n hold +inf (never within a finite radius).
  std::vector<T> panels(static_cast<size_t>(num_panels * d * pw));
  for (int64_t p = 0; p < num_panels; ++p)
    for (int64_t w = 0; w < pw; ++w) {
      const int64_t j = p * pw + w;
      for (int64_t c = 0; c < d; ++c)
        panels[(p * d + c) * pw + w] = j < n ? z[j * d + c] : std::numeric_limits<T>::infinity();
    }
  const CountArgs<T> args{z, panels.data(), n, d, radius};
  const int64_t num_blocks = (n + kCountRowBlock - 1) / kCountRowBlock;
  const int64_t work_per_block = kCountRowBlock * n * d;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, work_per_block));
  pfor(num_blocks, grain, [&](int64_t begin, int64_t end) {
    kernel->count_rows(args, inclusive, begin * kCountRowBlock, std::min(end * kCountRowBlock, n), counts);
  });
}

// Pair tests per second of the tiled kernel over those of the sweep's scalar window scan: the
// sweep runs when its windows hold fewer pairs than n^2 / kTiledAdvantage (a rough ratio; either
// path gives the same counts).
constexpr int64_t kTiledAdvantage = 16;

}  // namespace

template <class T>
void range_count_linf(const T* z, int64_t n, int64_t d, const T* radius, bool inclusive,
                      int64_t* counts, const ParallelFor& pfor, KsgPath path) {
  if (path == KsgPath::kTiled) return range_count_tiled(z, n, d, radius, inclusive, counts, pfor);
  const FirstCoordinateOrder<T> order = sort_by_first_coordinate(z, n, d);
  std::vector<int64_t> lo(static_cast<size_t>(n)), hi(static_cast<size_t>(n));
  sweep_windows(order, radius, inclusive, lo.data(), hi.data(), pfor);
  int64_t pairs = 0;
  for (int64_t p = 0; p < n; ++p) pairs += hi[p] - lo[p];
  if (path == KsgPath::kAuto && d > 1 && pairs > n * n / kTiledAdvantage)
    return range_count_tiled(z, n, d, radius, inclusive, counts, pfor);
  const int64_t* row = order.row.data();
  pfor(n, d == 1 ? kMinSweepRows : kMinSweepRows / 4, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t i = row[p];
      if (hi[p] == lo[p]) { counts[i] = 0; continue; }
      if (d == 1) { counts[i] = hi[p] - lo[p] - 1; continue; }  // the window, less the row itself
      const T r = radius[i];
      const T* zi = z + i * d;
      int64_t c = 0;
      for (int64_t q = lo[p]; q < hi[p]; ++q) {
        const T dist = linf_distance(zi, z + row[q] * d, d);
        c += (inclusive ? dist <= r : dist < r) ? 1 : 0;
      }
      counts[i] = c - 1;  // the row itself is in its window, at distance 0
    }
  });
}

template <class T>
double ksg_mutual_information(const T* x, const T* y, int64_t n, int64_t dx, int64_t dy,
                              int64_t k, int variant, int64_t* nx_out, int64_t* ny_out,
                              const ParallelFor& pfor, KsgPath path) {
  if (!all_finite(x, n * dx) || !all_finite(y, n * dy)) {
    if (nx_out) std::fill(nx_out, nx_out + n, int64_t{0});
    if (ny_out) std::fill(ny_out, ny_out + n, int64_t{0});
    return std::numeric_limits<double>::quiet_NaN();
  }

  // Pass 1: the k nearest other rows in the joint space, whose max-norm distance is the max-norm
  // of the concatenated rows.
  const int64_t dz = dx + dy;
  std::vector<T> xy(static_cast<size_t>(n * dz));
  for (int64_t i = 0; i < n; ++i) {
    std::copy(x + i * dx, x + (i + 1) * dx, xy.data() + i * dz);
    std::copy(y + i * dy, y + (i + 1) * dy, xy.data() + i * dz + dx);
  }
  std::vector<T> keys(static_cast<size_t>(n * k));
  std::vector<int64_t> idx(static_cast<size_t>(n * k));
  // The sweep wins while the strip of rows near a row in the first coordinate is a small part of
  // the data, i.e. in very low joint dimension (measured: dx = dy = 1).
  const bool sweep = path == KsgPath::kSweep || (path == KsgPath::kAuto && dz <= kMaxSweepSearchDim);
  if (sweep) knn_sweep_linf(xy.data(), n, dz, k, keys.data(), idx.data(), pfor);
  else knn_search(xy.data(), n, dz, k, Norm::Linf, RowRange{0, n}, keys.data(), idx.data(), pfor);
  xy = std::vector<T>();

  // The radii: eps_i in both marginals (variant 1), or the largest marginal distance to the k
  // joint neighbours (variant 2).
  std::vector<T> rx(static_cast<size_t>(n)), ry(static_cast<size_t>(n));
  if (variant == 1) {
    for (int64_t i = 0; i < n; ++i) rx[i] = ry[i] = keys[i * k + k - 1];
  } else {
    pfor(n, std::max<int64_t>(1, 65536 / (k * dz)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T ex = 0, ey = 0;
        for (int64_t q = 0; q < k; ++q) {
          const int64_t j = idx[i * k + q];
          ex = std::max(ex, linf_distance(x + i * dx, x + j * dx, dx));
          ey = std::max(ey, linf_distance(y + i * dy, y + j * dy, dy));
        }
        rx[i] = ex;
        ry[i] = ey;
      }
    });
  }

  // Pass 2: the marginal counts, strict (variant 1) or not (variant 2).
  std::vector<int64_t> own_nx, own_ny;
  if (!nx_out) { own_nx.resize(static_cast<size_t>(n)); nx_out = own_nx.data(); }
  if (!ny_out) { own_ny.resize(static_cast<size_t>(n)); ny_out = own_ny.data(); }
  const bool inclusive = variant == 2;
  range_count_linf(x, n, dx, rx.data(), inclusive, nx_out, pfor, path);
  range_count_linf(y, n, dy, ry.data(), inclusive, ny_out, pfor, path);

  // psi(n_x + 1) + psi(n_y + 1) (variant 1) or psi(n_x) + psi(n_y) (variant 2), summed in a fixed
  // order so the result does not depend on the number of threads.
  const int64_t shift = variant == 1 ? 1 : 0;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += digamma_int(nx_out[i] + shift) + digamma_int(ny_out[i] + shift);
  double mi = digamma_int(k) + digamma_int(n) - sum / static_cast<double>(n);
  if (variant == 2) mi -= 1.0 / static_cast<double>(k);
  return mi;
}

template void range_count_linf<float>(const float*, int64_t, int64_t, const float*, bool, int64_t*,
                                      const ParallelFor&, KsgPath);
template void range_count_linf<double>(const double*, int64_t, int64_t, const double*, bool,
                                       int64_t*, const ParallelFor&, KsgPath);
template double ksg_mutual_information<float>(const float*, const float*, int64_t, int64_t,
                                              int64_t, int64_t, int, int64_t*, int64_t*,
                                              const ParallelFor&, KsgPath);
template double ksg_mutual_information<double>(const double*, const double*, int64_t, int64_t,
                                               int64_t, int64_t, int, int64_t*, int64_t*,
                                               const ParallelFor&, KsgPath);

}  // namespace cpu
}  // namespace eae
