// Torch-free math shared by every backend (CPU and CUDA): the norm enum, the constant part of
// the Kozachenko–Leonenko estimate, and the top-k insertion with the lower-index tie-break.
//
//   H(z) = psi(N) - psi(k) + log V(d, p) + (d / N) * sum_i 0.5 * log(r_i^2 + eps^2)
//
// r_i is the p-norm distance from row i to its k-th nearest *other* row; ties are broken by the
// lower index. Kernels carry a "key" per candidate: the squared distance for p = 2 (no sqrt in the
// hot loop) and the distance itself for p = 1 and p = inf.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EAE_HD __host__ __device__ __forceinline__
#else
// static: every translation unit keeps its own copy, so the copies compiled for different CPU
// instruction sets (see csrc/cpu/) can never be merged by the linker.
#define EAE_HD static inline __attribute__((always_inline))
#endif

namespace eae {

// Which p-norm. The numeric values are the `p` the user passes (inf is encoded as 0).
enum class Norm : int { L1 = 1, L2 = 2, Linf = 0 };

// Maps p in {1, 2, inf} to Norm; returns false for anything else.
inline bool norm_from_p(double p, Norm* out) {
  if (p == 1.0) { *out = Norm::L1; return true; }
  if (p == 2.0) { *out = Norm::L2; return true; }
  if (std::isinf(p) && p > 0) { *out = Norm::Linf; return true; }
  return false;
}

// psi(n) for a positive integer n: the harmonic sum for small n, the asymptotic series beyond
// (the first omitted term is below 1e-17 for n >= 20).
inline double digamma_int(int64_t n) {
  const double euler_gamma = 0.57721566490153286060651209008240243;
  if (n < 20) {
    double s = -euler_gamma;
    for (int64_t j = 1; j < n; ++j) s += 1.0 / static_cast<double>(j);
    return s;
  }
  const double x = static_cast<double>(n);
  const double x2 = 1.0 / (x * x);
  // log x - 1/(2x) - sum_k B_2k / (2k x^2k)
  return std::log(x) - 0.5 / x -
         x2 * (1.0 / 12 - x2 * (1.0 / 120 - x2 * (1.0 / 252 - x2 * (1.0 / 240 - x2 * (1.0 / 132)))));
}

// log volume of the unit p-ball in R^d: d log(2 Gamma(1 + 1/p)) - lgamma(1 + d/p).
inline double log_unit_ball_volume(int64_t d, Norm norm) {
  const double dd = static_cast<double>(d);
  switch (norm) {
    case Norm::L1: return dd * std::log(2.0) - std::lgamma(1.0 + dd);
    case Norm::L2: return 0.5 * dd * std::log(3.14159265358979323846) - std::lgamma(1.0 + 0.5 * dd);
    case Norm::Linf: default: return dd * std::log(2.0);
  }
}

// psi(N) - psi(k) + log V(d, p): everything in H that does not depend on z.
inline double kl_constant(int64_t n, int64_t d, int64_t k, Norm norm) {
  return digamma_int(n) - digamma_int(k) + log_unit_ball_volume(d, norm);
}

// a * b and a + b, each rounded once, on the host and on the device. nvcc contracts a * b + c
// into one fma by default and the CPU build does not: written with these, the weight below has
// the same roundings on both.
EAE_HD float rn_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
EAE_HD double rn_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
EAE_HD float rn_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
EAE_HD double rn_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// 0.5 * log(r^2 + eps^2) from a key (squared distance for L2, distance otherwise), in double.
// A non-finite distance (NaN or inf input) gives NaN, so H is NaN for non-finite input.
EAE_HD double log_distance_term(double key, Norm norm, double eps) {
  const double r2 = (norm == Norm::L2) ? key : rn_mul(key, key);
  if (!(r2 <= 1.79769313486231570e308)) return NAN;  // NaN or inf
  return 0.5 * log(rn_add(r2, rn_mul(eps, eps)));
}

// d/dr of 0.5 * log(r^2 + eps^2), expressed so that the direction below multiplies it:
//   L2:       weight = 1 / (r^2 + eps^2), direction = (a - b)
//   L1, Linf: weight = r / (r^2 + eps^2), direction = sign(a - b) (Linf: arg-max coordinate only)
// Division is IEEE-rounded on both sides (nvcc without --use_fast_math).
template <class T>
EAE_HD T gradient_weight(T key, Norm norm, T eps) {
  if (norm == Norm::L2) return T(1) / rn_add(key, rn_mul(eps, eps));
  return key / rn_add(rn_mul(key, key), rn_mul(eps, eps));
}

// Candidate order: by key with NaN treated as +inf, then by index. The lower index wins ties.
template <class T>
EAE_HD bool knn_before(T key_a, int64_t idx_a, T key_b, int64_t idx_b) {
  const T inf = T(INFINITY);
  const T a = (key_a != key_a) ? inf : key_a;
  const T b = (key_b != key_b) ? inf : key_b;
  return a < b || (a == b && idx_a < idx_b);
}

// Inserts (key, j) into a row's list of the k best candidates, kept sorted by knn_before;
// returns whether it entered. An empty slot holds (+inf, n) with n = number of rows, so any
// real candidate displaces it. Index is int64_t on the CPU, int on the GPU.
template <class T, class Index>
EAE_HD bool topk_insert(T* keys, Index* idx, int k, T key, int64_t j) {
  if (!knn_before(key, j, keys[k - 1], idx[k - 1])) return false;
  int pos = k - 1;
  while (pos > 0 && knn_before(key, j, keys[pos - 1], idx[pos - 1])) {
    keys[pos] = keys[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  keys[pos] = key;
  idx[pos] = static_cast<Index>(j);
  return true;
}

}  // namespace eae
