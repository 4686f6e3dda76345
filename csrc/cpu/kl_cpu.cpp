// The ISA-independent driver of the CPU kernels: packing, run-time ISA choice, and the fused
// entropy (log terms + deterministic gradient). The distance search itself is in search_impl.h.
#include "kl_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "search.h"
#include "search_mixed.h"

namespace eae {
namespace cpu {

void serial_for(int64_t n, int64_t /*grain*/, const RangeFn& body) {
  if (n > 0) body(0, n);
}

// ---- Run-time choice of the instruction set ----

namespace {

enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

bool cpu_has(Isa isa) {
#if defined(EAE_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (isa == kAvx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == kGeneric;
}

int isa_from_name(const char* name) {
  for (int i = 0; i < 3; ++i)
    if (name && std::strcmp(name, kIsaNames[i]) == 0) return i;
  return -1;
}

// The best ISA of this CPU, unless EAE_KERNELS_CPU_ISA names a supported one.
int initial_isa() {
  const int forced = isa_from_name(std::getenv("EAE_KERNELS_CPU_ISA"));
  if (forced >= 0 && cpu_has(static_cast<Isa>(forced))) return forced;
  for (int i = kAvx512; i > kGeneric; --i)
    if (cpu_has(static_cast<Isa>(i))) return i;
  return kGeneric;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{initial_isa()};
  return isa;
}

template <class T>
const SearchKernel<T>* kernel_for(int isa);

template <>
const SearchKernel<float>* kernel_for<float>(int isa) {
#if defined(EAE_HAVE_X86_KERNELS)
  if (isa == kAvx512) return avx512::kernel_f32();
  if (isa == kAvx2) return avx2::kernel_f32();
#endif
  (void)isa;
  return generic::kernel_f32();
}

template <>
const SearchKernel<double>* kernel_for<double>(int isa) {
#if defined(EAE_HAVE_X86_KERNELS)
  if (isa == kAvx512) return avx512::kernel_f64();
  if (isa == kAvx2) return avx2::kernel_f64();
#endif
  (void)isa;
  return generic::kernel_f64();
}

// Items per parallel task, so that each task has at least `min_work` units of work: small
// batches then run on the calling thread and do not pay for waking the thread pool.
int64_t grain_for(int64_t work_per_item, int64_t min_work) {
  return std::max<int64_t>(1, min_work / std::max<int64_t>(1, work_per_item));
}
constexpr int64_t kMinSearchWork = int64_t{1} << 20;  // distance-coordinate operations
constexpr int64_t kMinCopyWork = int64_t{1} << 16;    // values copied or accumulated

}  // namespace

const char* isa() { return kIsaNames[current_isa().load()]; }

bool isa_supported(const char* name) {
  const int i = isa_from_name(name);
  return i >= 0 && cpu_has(static_cast<Isa>(i));
}

bool set_isa(const char* name) {
  if (!isa_supported(name)) return false;
  current_isa().store(isa_from_name(name));
  return true;
}

// ---- Nearest-neighbour search ----

namespace {

// A reference set packed for the search kernel: panels[p][c][w] = rows[p*pw + w][c]; columns
// past n are +inf, which never becomes a candidate. finite[j]: row j holds no NaN or inf.
template <class T>
struct PackedRows {
  std::vector<T> panels;
  std::vector<uint8_t> finite;
};

// known_finite: the caller has checked every value (keys_cannot_overflow), so the per-value
// check is skipped (at small n it is a visible part of the packing).
template <class T>
PackedRows<T> pack_rows(const T* rows, int64_t n, int64_t d, int64_t pw, bool known_finite,
                        const ParallelFor& pfor) {
  const int64_t num_panels = (n + pw - 1) / pw;
  PackedRows<T> packed;
  packed.panels.resize(static_cast<size_t>(num_panels * d * pw));
  packed.finite.resize(static_cast<size_t>(n));
  pfor(num_panels, grain_for(d * pw, kMinCopyWork), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* panel = packed.panels.data() + p * d * pw;
      for (int64_t w = 0; w < pw; ++w) {
        const int64_t j = p * pw + w;
        if (j >= n) {
          for (int64_t c = 0; c < d; ++c) panel[c * pw + w] = std::numeric_limits<T>::infinity();
          continue;
        }
        const T* row = rows + j * d;
        if (known_finite) {
          for (int64_t c = 0; c < d; ++c) panel[c * pw + w] = row[c];
          packed.finite[j] = 1;
          continue;
        }
        // `&`, not `&&`: no branch per value.
        bool ok = true;
        for (int64_t c = 0; c < d; ++c) {
          panel[c * pw + w] = row[c];
          ok &= static_cast<bool>(std::isfinite(row[c]));
        }
        packed.finite[j] = ok;
      }
    }
  });
  return packed;
}

// finite[i] for the query rows of a cross search (the self search has them from pack_rows).
template <class T>
std::vector<uint8_t> finite_rows(const T* rows, int64_t n, int64_t d) {
  std::vector<uint8_t> finite(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    bool ok = true;
    for (int64_t c = 0; c < d; ++c) ok = ok && std::isfinite(rows[i * d + c]);
    finite[i] = ok;
  }
  return finite;
}

// Whether no key of these rows can overflow: every value finite with |value| <= L, where
// 4 L^2 d (the largest squared L2 distance; L1 and Linf distances are smaller) is a quarter of
// the type's maximum, leaving room for rounding. The magnitudes are compared as integers (the
// bits of a float without its sign order like its absolute value, and inf and NaN lie above
// every finite value), so the loop is one vectorised integer maximum.
template <class T>
bool keys_cannot_overflow(const T* values, int64_t count, int64_t d) {
  using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  constexpr Bits magnitude = std::numeric_limits<Bits>::max() >> 1;
  const T limit = static_cast<T>(
      std::sqrt(static_cast<double>(std::numeric_limits<T>::max()) / (16.0 * static_cast<double>(d))));
  Bits limit_bits, largest = 0;
  std::memcpy(&limit_bits, &limit, sizeof(T));
  for (int64_t i = 0; i < count; ++i) {
    Bits b;
    std::memcpy(&b, values + i, sizeof(T));
    b &= magnitude;
    largest = b > largest ? b : largest;
  }
  return largest <= limit_bits;
}

// The top-k lists of the query rows x[rows] in the self search (among x, row i excluded) and/or
// the cross search (among y), filled in one parallel pass over the query rows: each chunk of rows
// is searched against x's panels and then y's while its rows are in cache.
template <class T>
struct SearchPass {
  bool self = false, cross = false;
  std::vector<T> self_keys, cross_keys;      // (rows, k)
  std::vector<int64_t> self_idx, cross_idx;  // (rows, k)
};

template <class T>
SearchPass<T> search_pass(const T* x, int64_t nx, RowRange rows, const T* y, int64_t ny, int64_t d,
                          int64_t k, Norm norm, bool self, bool cross, const ParallelFor& pfor) {
  const SearchKernel<T>* kernel = kernel_for<T>(current_isa().load());
  const int64_t pw = kernel->panel_width;
  const int64_t m = rows.end - rows.begin;
  SearchPass<T> pass;
  pass.self = self;
  pass.cross = cross;
  PackedRows<T> packed_x, packed_y;
  std::vector<uint8_t> query_finite;
  const bool x_bounded = keys_cannot_overflow(x, nx * d, d);
  const bool y_bounded = cross && keys_cannot_overflow(y, ny * d, d);
  if (self) packed_x = pack_rows(x, nx, d, pw, x_bounded, pfor);
  if (cross) {
    packed_y = pack_rows(y, ny, d, pw, y_bounded, pfor);
    if (!self) query_finite = finite_rows(x, nx, d);
  }
  const uint8_t* x_finite = self ? packed_x.finite.data() : query_finite.data();

  auto init = [&](std::vector<T>& keys, std::vector<int64_t>& idx, int64_t n) {
    keys.assign(static_cast<size_t>(m * k), std::numeric_limits<T>::infinity());
    idx.assign(static_cast<size_t>(m * k), n);  // empty slot: (+inf, n)
  };
  SearchArgs<T> args[2];
  int count = 0;
  if (self) {
    init(pass.self_keys, pass.self_idx, nx);
    args[count++] = SearchArgs<T>{x, x_finite, packed_x.panels.data(), packed_x.finite.data(),
                                  nx, d, k, norm, true, rows.begin, pass.self_keys.data(),
                                  pass.self_idx.data(), x_bounded};
  }
  if (cross) {
    init(pass.cross_keys, pass.cross_idx, ny);
    args[count++] = SearchArgs<T>{x, x_finite, packed_y.panels.data(), packed_y.finite.data(),
                                  ny, d, k, norm, false, rows.begin, pass.cross_keys.data(),
                                  pass.cross_idx.data(),
                                  x_bounded && y_bounded};
  }
  // L2 in float: each search (x in x, x in y) goes to the certified integer search with exact
  // refinement when wanted and applicable (same keys and indices; it runs this kernel itself on
  // row blocks it cannot prune); the searches it does not take stay in the exact pass below.
  // KoLeo's search too: measured against a BLAS candidate search (|x_j|^2 - 2 <x_i, x_j> by
  // sgemm, then exact re-measurement) on KoLeo shapes, one thread, fwd+bwd, the integer search
  // was as fast at B = 1024 (0.91-1.07x) and 1.4-1.8x faster at B = 4096 (d = 384 and 768).
  if constexpr (std::is_same<T, float>::value) {
    int exact_count = 0;
    for (int s = 0; s < count; ++s)
      if (!knn_search_mixed(args[s], args[s].exclude_self ? x : y, *kernel, rows, pfor))
        args[exact_count++] = args[s];
    count = exact_count;
  }
  int64_t candidates = 0;
  for (int s = 0; s < count; ++s) candidates += args[s].n;
  if (count == 0) return pass;
  pfor(m, grain_for(candidates * d, kMinSearchWork), [&](int64_t begin, int64_t end) {
    for (int s = 0; s < count; ++s)
      kernel->search_rows(args[s], rows.begin + begin, rows.begin + end);
  });
  return pass;
}

}  // namespace

template <class T>
void knn_search(const T* x, int64_t nx, RowRange rows, const T* y, int64_t ny, int64_t d,
                int64_t k, Norm norm, T* keys, int64_t* idx, const ParallelFor& pfor) {
  const bool self = (y == nullptr);
  SearchPass<T> pass = search_pass(x, nx, rows, y, ny, d, k, norm, self, !self, pfor);
  const std::vector<T>& k_src = self ? pass.self_keys : pass.cross_keys;
  const std::vector<int64_t>& i_src = self ? pass.self_idx : pass.cross_idx;
  std::copy(k_src.begin(), k_src.end(), keys);
  std::copy(i_src.begin(), i_src.end(), idx);
}

template <class T>
void knn_search(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, RowRange rows, T* keys,
                int64_t* idx, const ParallelFor& pfor) {
  knn_search<T>(z, n, rows, nullptr, n, d, k, norm, keys, idx, pfor);
}

// ---- Fused estimates and their gradient ----

namespace {

// Per query row of one search: the k-th neighbour, its term and its signed gradient weight.
template <class T>
struct Terms {
  std::vector<int64_t> nbr;
  std::vector<double> term;
  std::vector<T> weight;  // sign * d term / d r, in the form GradientArgs multiplies
};

template <class T>
Terms<T> kth_terms(const std::vector<T>& keys, const std::vector<int64_t>& idx, int64_t m,
                   int64_t k, Norm norm, double eps, Term kind, double sign) {
  Terms<T> t;
  t.nbr.resize(static_cast<size_t>(m));
  t.term.resize(static_cast<size_t>(m));
  t.weight.resize(static_cast<size_t>(m));
  const T eps_t = static_cast<T>(eps), sign_t = static_cast<T>(sign);
  for (int64_t r = 0; r < m; ++r) {
    const T key = keys[r * k + k - 1];
    t.nbr[r] = idx[r * k + k - 1];
    if (kind == Term::KL) {
      t.term[r] = log_distance_term(static_cast<double>(key), norm, eps);
      t.weight[r] = std::isfinite(t.term[r]) ? sign_t * gradient_weight(key, norm, eps_t)
                                             : std::numeric_limits<T>::quiet_NaN();
    } else {
      t.term[r] = koleo_term(static_cast<double>(key), eps);
      t.weight[r] = std::isfinite(t.term[r]) ? sign_t * koleo_gradient_weight(key, eps_t)
                                             : std::numeric_limits<T>::quiet_NaN();
    }
  }
  return t;
}

// Query rows (local index r) grouped by their neighbour j, each group in ascending r (CSR):
// the rows whose k-th neighbour is j are reverse[start[j] .. start[j + 1]).
struct ReverseList {
  std::vector<int64_t> start, reverse;
};

ReverseList reverse_list(const std::vector<int64_t>& nbr, int64_t n) {
  const int64_t m = static_cast<int64_t>(nbr.size());
  ReverseList list;
  list.start.assign(static_cast<size_t>(n + 1), 0);
  for (int64_t r = 0; r < m; ++r) ++list.start[nbr[r] + 1];
  for (int64_t i = 0; i < n; ++i) list.start[i + 1] += list.start[i];
  std::vector<int64_t> fill(list.start.begin(), list.start.end() - 1);
  list.reverse.resize(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) list.reverse[fill[nbr[r]]++] = r;
  return list;
}

}  // namespace

template <class T>
double estimate(const T* x, int64_t nx, RowRange rows, const T* y, int64_t ny, int64_t d,
                int64_t k, Norm norm, double eps, const EstimateSpec& spec, T* grad_x, T* grad_y,
                int64_t* nbr_self, int64_t* nbr_cross, const ParallelFor& pfor) {
  const bool self = spec.self_sign != 0, cross = spec.cross_sign != 0;
  const int64_t m = rows.end - rows.begin;
  const SearchPass<T> pass = search_pass(x, nx, rows, y, ny, d, k, norm, self, cross, pfor);
  Terms<T> ts, tc;
  if (self) ts = kth_terms(pass.self_keys, pass.self_idx, m, k, norm, eps, spec.term, spec.self_sign);
  if (cross) tc = kth_terms(pass.cross_keys, pass.cross_idx, m, k, norm, eps, spec.term, spec.cross_sign);

  // Each search's terms are summed in row order, then signed and scaled.
  double sum = 0.0;
  for (const Terms<T>* t : {&ts, &tc}) {
    if (t->term.empty()) continue;
    double part = 0.0;
    for (double v : t->term) part += v;
    sum += (t == &ts ? spec.self_sign : spec.cross_sign) * part;
  }
  const double value = spec.constant + spec.scale * sum;
  if (nbr_self != nullptr && self) std::copy(ts.nbr.begin(), ts.nbr.end(), nbr_self);
  if (nbr_cross != nullptr && cross) std::copy(tc.nbr.begin(), tc.nbr.end(), nbr_cross);

  // The gradient, each row gathered from its own term(s) and the terms that chose it, so no
  // atomics are needed:
  //   dv/dx_i = scale [ [i in rows] (w_i dr(x_i, x_{ns_i}) + w'_i dr(x_i, y_{nc_i}))
  //                     + sum_{j in rows, ns_j = i} w_j dr(x_i, x_j) ]
  //   dv/dy_i = scale sum_{j in rows, nc_j = i} w'_j dr(y_i, x_j)
  const SearchKernel<T>* kernel = kernel_for<T>(current_isa().load());
  const T scale_t = static_cast<T>(spec.scale);
  if (grad_x != nullptr) {
    ReverseList rev;
    if (self) rev = reverse_list(ts.nbr, nx);
    GradientArgs<T> args{x, grad_x, d, norm, scale_t, rows.begin, m};
    if (self) {
      args.self_ref = x;
      args.self_nbr = ts.nbr.data();
      args.self_weight = ts.weight.data();
      args.rev_start = rev.start.data();
      args.rev = rev.reverse.data();
      args.rev_weight = ts.weight.data();
      args.rev_ref = x;
      args.rev_first = rows.begin;
    }
    if (cross) {
      args.cross_ref = y;
      args.cross_nbr = tc.nbr.data();
      args.cross_weight = tc.weight.data();
    }
    pfor(nx, grain_for(2 * d, kMinCopyWork),
         [&](int64_t begin, int64_t end) { kernel->gradient_rows(args, begin, end); });
  }
  if (grad_y != nullptr && cross) {
    const ReverseList rev = reverse_list(tc.nbr, ny);
    GradientArgs<T> args{y, grad_y, d, norm, scale_t, 0, 0};
    args.rev_start = rev.start.data();
    args.rev = rev.reverse.data();
    args.rev_weight = tc.weight.data();
    args.rev_ref = x;
    args.rev_first = rows.begin;
    pfor(ny, grain_for(2 * d, kMinCopyWork),
         [&](int64_t begin, int64_t end) { kernel->gradient_rows(args, begin, end); });
  }
  return value;
}

template <class T>
double kl_entropy(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, double eps,
                  RowRange rows, T* grad, int64_t* nbr, const ParallelFor& pfor) {
  EstimateSpec spec = estimate_spec(Estimator::Entropy, n, n, d, k, norm);
  if (!(rows.begin == 0 && rows.end > 0)) spec.constant = 0.0;  // one range of a partition has it
  return estimate<T>(z, n, rows, nullptr, 0, d, k, norm, eps, spec, grad, nullptr, nbr, nullptr, pfor);
}

// ---- Batches of sets ----

namespace {

// Runs fn(b, inner) for every set: one set uses the parallel loop inside it; several sets run in
// parallel, each on one thread (small sets would not fill the threads).
void for_each_set(int64_t sets, int64_t work_per_set, const ParallelFor& pfor,
                  const std::function<void(int64_t, const ParallelFor&)>& fn) {
  if (sets == 1) {
    fn(0, pfor);
    return;
  }
  const ParallelFor serial = serial_for;
  pfor(sets, grain_for(work_per_set, kMinSearchWork), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) fn(b, serial);
  });
}

}  // namespace

template <class T>
void knn_search_sets(const T* x, const T* y, const Batch& batch, int64_t k, Norm norm, T* keys,
                     int64_t* idx, const ParallelFor& pfor) {
  const bool self = (y == nullptr);
  const int64_t d = batch.d, my = self ? batch.mx : batch.my;
  for_each_set(batch.sets, batch.mx * my * d, pfor, [&](int64_t b, const ParallelFor& inner) {
    const int64_t m = batch.rows_x(b), n = self ? m : batch.rows_y(b);
    T* keys_b = keys + b * batch.mx * k;
    int64_t* idx_b = idx + b * batch.mx * k;
    if (m > 0)
      knn_search<T>(x + b * batch.mx * d, m, {0, m}, self ? nullptr : y + b * my * d, n, d, k, norm,
                    keys_b, idx_b, inner);
    std::fill(keys_b + m * k, keys_b + batch.mx * k, T(0));
    std::fill(idx_b + m * k, idx_b + batch.mx * k, int64_t(-1));
  });
}

template <class T>
void estimate_sets(const T* x, const T* y, const Batch& batch, int64_t k, Norm norm, double eps,
                   Estimator est, double* values, T* grad_x, T* grad_y, int64_t* nbr,
                   const ParallelFor& pfor) {
  const bool self_only = (y == nullptr);
  const int64_t d = batch.d, my = self_only ? batch.mx : batch.my;
  for_each_set(batch.sets, batch.mx * (batch.mx + my) * d, pfor, [&](int64_t b, const ParallelFor& inner) {
    const int64_t m = batch.rows_x(b), n = self_only ? m : batch.rows_y(b);
    const T* xb = x + b * batch.mx * d;
    const T* yb = self_only ? nullptr : y + b * my * d;
    T* gx = grad_x ? grad_x + b * batch.mx * d : nullptr;
    T* gy = (grad_y && !self_only) ? grad_y + b * my * d : nullptr;
    int64_t* nb = nbr ? nbr + b * batch.mx : nullptr;
    values[b] = estimate<T>(xb, m, {0, m}, yb, n, d, k, norm, eps, estimate_spec(est, m, n, d, k, norm),
                            gx, gy, nb, nullptr, inner);
    if (gx) std::fill(gx + m * d, gx + batch.mx * d, T(0));
    if (gy) std::fill(gy + n * d, gy + my * d, T(0));
    if (nb) std::fill(nb + m, nb + batch.mx, int64_t(-1));
  });
}

#define EAE_INSTANTIATE(T)                                                                        \
  template void knn_search<T>(const T*, int64_t, int64_t, int64_t, Norm, RowRange, T*, int64_t*,  \
                              const ParallelFor&);                                                \
  template void knn_search<T>(const T*, int64_t, RowRange, const T*, int64_t, int64_t, int64_t,   \
                              Norm, T*, int64_t*, const ParallelFor&);                            \
  template double kl_entropy<T>(const T*, int64_t, int64_t, int64_t, Norm, double, RowRange, T*,  \
                                int64_t*, const ParallelFor&);                                    \
  template double estimate<T>(const T*, int64_t, RowRange, const T*, int64_t, int64_t, int64_t,   \
                              Norm, double, const EstimateSpec&, T*, T*, int64_t*, int64_t*,      \
                              const ParallelFor&);                                                \
  template void knn_search_sets<T>(const T*, const T*, const Batch&, int64_t, Norm, T*, int64_t*, \
                                   const ParallelFor&);                                           \
  template void estimate_sets<T>(const T*, const T*, const Batch&, int64_t, Norm, double,         \
                                 Estimator, double*, T*, T*, int64_t*, const ParallelFor&);

EAE_INSTANTIATE(float)
EAE_INSTANTIATE(double)

}  // namespace cpu
}  // namespace eae
