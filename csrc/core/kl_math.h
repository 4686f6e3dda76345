// Torch-free math shared by every backend (CPU and CUDA): the norm enum, the constant part of
// the Kozachenko–Leonenko estimates, and the top-k insertion with the lower-index tie-break.
//
// Every kNN log-density estimate of the package follows one rule: for M query rows whose k-th
// neighbour is searched among C candidate rows,
//
//   psi(C + 1) - psi(k) + log V(d, p) + (d / M) * sum_i 0.5 * log(r_i^2 + eps^2)
//
// with C = N - 1 in the self case (a set of N rows, the row itself excluded: the entropy
// H(z) = psi(N) - psi(k) + ...) and C = N for a separate reference set of N rows (the
// cross-entropy). r_i is the p-norm distance from query row i to its k-th nearest candidate; ties
// are broken by the lower index. Kernels carry a "key" per candidate: the squared distance for p = 2 (no sqrt in the
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

// psi(C + 1) - psi(k) + log V(d, p) for C candidate rows: everything in an estimate that does
// not depend on the rows (see the top of this file).
inline double estimate_constant(int64_t candidates, int64_t d, int64_t k, Norm norm) {
  return digamma_int(candidates + 1) - digamma_int(k) + log_unit_ball_volume(d, norm);
}

// The entropy's constant for a set of n rows (n - 1 candidates): psi(n) - psi(k) + log V(d, p).
inline double kl_constant(int64_t n, int64_t d, int64_t k, Norm norm) {
  return estimate_constant(n - 1, d, k, norm);
}

// sign(a - b) as T, with sign(0) = 0: the direction of d|a - b| / da (L1, Linf gradients).
template <class T>
EAE_HD T sign_of_difference(T a, T b) {
  return static_cast<T>(static_cast<int>(a > b) - static_cast<int>(a < b));
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

// The estimators built on the neighbour search. Each is, for one set of M query rows,
//
//   value = constant + scale * sum_i [ self_sign * term(r_i^self) + cross_sign * term(r_i^cross) ]
//
// where r^self is the distance to the k-th nearest other row of the query set itself and r^cross
// to the k-th nearest row of a separate reference set of N rows (a sign of 0: that search is not
// made), and term is 0.5 log(r^2 + eps^2) (Kozachenko-Leonenko) or log(r + eps) (KoLeo).
enum class Estimator : int { Entropy = 0, CrossEntropy = 1, Divergence = 2, KoLeo = 3 };
enum class Term : int { KL = 0, KoLeo = 1 };

struct EstimateSpec {
  Term term;
  double scale;
  double self_sign, cross_sign;  // +1, -1, or 0 (search not made)
  double constant;
};

// The estimate of one set of m query rows against n reference rows (n = m for the self-only
// estimators), with the one constant rule above:
//   Entropy       H(x)    = psi(m) - psi(k) + log V + (d/m) sum log-term(r^self)
//   CrossEntropy  H(x, y) = psi(n + 1) - psi(k) + log V + (d/m) sum log-term(r^cross)
//   Divergence    D(x||y) = H(x, y) - H(x) = psi(n + 1) - psi(m) + (d/m) sum [term(r^cross) - term(r^self)]
//   KoLeo         L(x)    = -(1/m) sum log(r^self + eps)                       (k = 1, L2)
inline EstimateSpec estimate_spec(Estimator est, int64_t m, int64_t n, int64_t d, int64_t k, Norm norm) {
  const double dm = static_cast<double>(d) / static_cast<double>(m);
  switch (est) {
    case Estimator::Entropy: return {Term::KL, dm, 1.0, 0.0, estimate_constant(m - 1, d, k, norm)};
    case Estimator::CrossEntropy: return {Term::KL, dm, 0.0, 1.0, estimate_constant(n, d, k, norm)};
    case Estimator::Divergence:
      return {Term::KL, dm, -1.0, 1.0, digamma_int(n + 1) - digamma_int(m)};
    case Estimator::KoLeo: default:
      return {Term::KoLeo, -1.0 / static_cast<double>(m), 1.0, 0.0, 0.0};
  }
}

// KoLeo's term log(r + eps) from a squared distance, in double; NaN for a non-finite distance.
EAE_HD double koleo_term(double key, double eps) {
  if (!(key <= 1.79769313486231570e308)) return NAN;
  return log(sqrt(key) + eps);
}

// d/dr log(r + eps) / r, so that it multiplies the L2 direction (a - b); 0 for coincident rows,
// whose direction is 0 (the gradient of log(r + eps) is then 0, as autograd's).
template <class T>
EAE_HD T koleo_gradient_weight(T key, T eps) {
  if (!(key > T(0))) return T(0);
  const T r = sqrt(key);
  return T(1) / ((r + eps) * r);
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
