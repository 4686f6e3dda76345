// The ISA-independent driver of the CPU kernels: packing, run-time ISA choice, and the fused
// entropy (log terms + deterministic gradient). The distance search itself is in search_impl.h.
#include "kl_cpu.h"

#include <algorithm>
#include <atomic>
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

template <class T>
void knn_search(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, RowRange rows, T* keys,
                int64_t* idx, const ParallelFor& pfor) {
  const SearchKernel<T>* kernel = kernel_for<T>(current_isa().load());
  const int64_t pw = kernel->panel_width;
  const int64_t num_panels = (n + pw - 1) / pw;

  // Column panels: panels[p][c][w] = z[p*pw + w][c]; columns past n are +inf, which never
  // becomes a candidate. Also flag rows that hold a NaN or inf.
  std::vector<T> panels(static_cast<size_t>(num_panels * d * pw));
  std::vector<uint8_t> finite(static_cast<size_t>(n));
  pfor(num_panels, grain_for(d * pw, kMinCopyWork), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* panel = panels.data() + p * d * pw;
      for (int64_t w = 0; w < pw; ++w) {
        const int64_t j = p * pw + w;
        bool ok = true;
        for (int64_t c = 0; c < d; ++c) {
          const T v = j < n ? z[j * d + c] : std::numeric_limits<T>::infinity();
          panel[c * pw + w] = v;
          ok = ok && std::isfinite(v);
        }
        if (j < n) finite[j] = ok;
      }
    }
  });

  const int64_t m = rows.end - rows.begin;
  std::fill(keys, keys + m * k, std::numeric_limits<T>::infinity());
  std::fill(idx, idx + m * k, n);  // empty slot: (+inf, n)

  const SearchArgs<T> args{z, panels.data(), finite.data(), n, d, k, norm, rows.begin, keys, idx};
  // L2 in float: the certified integer search with exact refinement, when wanted and applicable
  // (same keys and indices; it runs this kernel itself on row blocks it cannot prune).
  if constexpr (std::is_same<T, float>::value)
    if (knn_search_mixed(args, *kernel, rows, pfor)) return;
  pfor(m, grain_for(n * d, kMinSearchWork), [&](int64_t begin, int64_t end) {
    kernel->search_rows(args, rows.begin + begin, rows.begin + end);
  });
}

// ---- Fused entropy and gradient ----

namespace {

// sign(a - b) as T, with sign(0) = 0.
template <class T>
inline T sign_of_difference(T a, T b) {
  return static_cast<T>((a > b) - (a < b));
}

// g += weight * d r(a, b) / d a, where r is the p-norm distance between rows a and b:
//   L2: (a - b) (the 1/r is folded into weight), L1: sign(a - b),
//   Linf: sign(a_m - b_m) at the lowest coordinate m of largest |a_m - b_m|.
template <class T>
inline void add_distance_gradient(T* g, const T* a, const T* b, int64_t d, Norm norm, T weight) {
  switch (norm) {
    case Norm::L2:
      for (int64_t c = 0; c < d; ++c) g[c] += weight * (a[c] - b[c]);
      break;
    case Norm::L1:
      for (int64_t c = 0; c < d; ++c) g[c] += weight * sign_of_difference(a[c], b[c]);
      break;
    case Norm::Linf: {
      int64_t m = 0;
      T best = std::abs(a[0] - b[0]);
      for (int64_t c = 1; c < d; ++c) {
        const T v = std::abs(a[c] - b[c]);
        if (v > best) { best = v; m = c; }
      }
      g[m] += weight * sign_of_difference(a[m], b[m]);
      break;
    }
  }
}

}  // namespace

template <class T>
double kl_entropy(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, double eps,
                  RowRange rows, T* grad, int64_t* nbr_out, const ParallelFor& pfor) {
  const int64_t m = rows.end - rows.begin;
  std::vector<T> keys(static_cast<size_t>(m * k));
  std::vector<int64_t> idx(static_cast<size_t>(m * k));
  knn_search(z, n, d, k, norm, rows, keys.data(), idx.data(), pfor);

  // Per range row (local index r, row rows.begin + r): the k-th neighbour, its log-distance
  // term and its gradient weight.
  std::vector<int64_t> nbr(static_cast<size_t>(m));
  std::vector<double> terms(static_cast<size_t>(m));
  std::vector<T> weight(static_cast<size_t>(m));
  const T eps_t = static_cast<T>(eps);
  for (int64_t r = 0; r < m; ++r) {
    const T key = keys[r * k + k - 1];
    nbr[r] = idx[r * k + k - 1];
    terms[r] = log_distance_term(static_cast<double>(key), norm, eps);
    weight[r] = std::isfinite(terms[r]) ? gradient_weight(key, norm, eps_t)
                                        : std::numeric_limits<T>::quiet_NaN();
  }
  double sum = 0.0;
  for (int64_t r = 0; r < m; ++r) sum += terms[r];
  const double scale = static_cast<double>(d) / static_cast<double>(n);
  const double h = (rows.begin == 0 && m > 0 ? kl_constant(n, d, k, norm) : 0.0) + scale * sum;
  if (nbr_out != nullptr) std::copy(nbr.begin(), nbr.end(), nbr_out);
  if (grad == nullptr) return h;

  // Reverse neighbours as a CSR list, each row's list in ascending order, so the scatter part of
  // the gradient is a deterministic gather:
  //   dh/dz_i = (d/N) [ [i in rows] w_i dr(z_i, z_{n_i}) + sum_{j in rows, n_j = i} w_j dr(z_i, z_j) ]
  std::vector<int64_t> start(static_cast<size_t>(n + 1), 0);
  for (int64_t r = 0; r < m; ++r) ++start[nbr[r] + 1];
  for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<int64_t> reverse(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) reverse[fill[nbr[r]]++] = r;

  const T scale_t = static_cast<T>(scale);
  pfor(n, grain_for(2 * d, kMinCopyWork), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* g = grad + i * d;
      const T* zi = z + i * d;
      std::fill(g, g + d, T(0));
      const int64_t own = i - rows.begin;
      if (own >= 0 && own < m) add_distance_gradient(g, zi, z + nbr[own] * d, d, norm, weight[own]);
      for (int64_t q = start[i]; q < start[i + 1]; ++q) {
        const int64_t r = reverse[q];
        add_distance_gradient(g, zi, z + (rows.begin + r) * d, d, norm, weight[r]);
      }
      for (int64_t c = 0; c < d; ++c) g[c] *= scale_t;
    }
  });
  return h;
}

template void knn_search<float>(const float*, int64_t, int64_t, int64_t, Norm, RowRange, float*,
                                int64_t*, const ParallelFor&);
template void knn_search<double>(const double*, int64_t, int64_t, int64_t, Norm, RowRange,
                                 double*, int64_t*, const ParallelFor&);
template double kl_entropy<float>(const float*, int64_t, int64_t, int64_t, Norm, double, RowRange,
                                  float*, int64_t*, const ParallelFor&);
template double kl_entropy<double>(const double*, int64_t, int64_t, int64_t, Norm, double,
                                   RowRange, double*, int64_t*, const ParallelFor&);

}  // namespace cpu
}  // namespace eae
