// The KSG mutual-information estimator on the CPU: pass 1 (joint k-NN, max-norm) reuses the
// search of kl_cpu.cpp on the concatenated rows [x, y]; pass 2 is the range-count kernel of
// ksg_count_impl.h, compiled per instruction set and chosen with the search's ISA switch.
#include "ksg_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
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

}  // namespace

template <class T>
void range_count_linf(const T* z, int64_t n, int64_t d, const T* radius, bool inclusive,
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

template <class T>
double ksg_mutual_information(const T* x, const T* y, int64_t n, int64_t dx, int64_t dy,
                              int64_t k, int variant, int64_t* nx_out, int64_t* ny_out,
                              const ParallelFor& pfor) {
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
  knn_search(xy.data(), n, dz, k, Norm::Linf, RowRange{0, n}, keys.data(), idx.data(), pfor);
  xy = std::vector<T>();

  // The radii: eps_i in both marginals (variant 1), or the largest marginal distance to the k
  // joint neighbours (variant 2).
  std::vector<T> rx(static_cast<size_t>(n)), ry(static_cast<size_t>(n));
  if (variant == 1) {
    for (int64_t i = 0; i < n; ++i) rx[i] = ry[i] = keys[i * k + k - 1];
  } else {
    pfor(n, std::max<int64_t>(1, 4096 / (k * dz)), [&](int64_t begin, int64_t end) {
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
  range_count_linf(x, n, dx, rx.data(), inclusive, nx_out, pfor);
  range_count_linf(y, n, dy, ry.data(), inclusive, ny_out, pfor);

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
                                      const ParallelFor&);
template void range_count_linf<double>(const double*, int64_t, int64_t, const double*, bool,
                                       int64_t*, const ParallelFor&);
template double ksg_mutual_information<float>(const float*, const float*, int64_t, int64_t,
                                              int64_t, int64_t, int, int64_t*, int64_t*,
                                              const ParallelFor&);
template double ksg_mutual_information<double>(const double*, const double*, int64_t, int64_t,
                                               int64_t, int64_t, int, int64_t*, int64_t*,
                                               const ParallelFor&);

}  // namespace cpu
}  // namespace eae
