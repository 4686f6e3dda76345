// What happens to a query row once its top-k list is complete (all lanes of the row's group
// call these, with uniform control flow): the reported key (NaN rule), the knn outputs or the
// entropy term and gradient weight, and the atomic gradient scatter.
#pragma once

#include <climits>

#include "kernel_params.cuh"
#include "ptx.cuh"
#include "topk.cuh"

namespace eae {
namespace cuda {
namespace detail {

template <class T>
__device__ bool row_is_finite(const T* z, int row, int d) {
  const T* x = z + static_cast<int64_t>(row) * d;
  for (int c = 0; c < d; ++c)
    if (!isfinite(x[c])) return false;
  return true;
}

// The key the CPU kernel reports: NaN when either row holds a NaN or inf. Such a pair's key
// here is already NaN or +inf (never finite), so only non-finite keys need the check; a finite
// pair whose distance overflows keeps +inf.
template <class T>
__device__ T reported_key(const Params<T>& p, T key, int i, int j) {
  if (isfinite(key)) return key;
  return (row_is_finite(p.z, i, p.d) && row_is_finite(p.z, j, p.d)) ? key : T(NAN);
}

// The lowest coordinate of the largest |a_c - b_c| among the GROUP lanes (each lane scans
// c = lane, lane + GROUP, ...), as the CPU kernel picks it: start from coordinate 0 and move on
// only to a strictly larger value (so NaN coordinates are skipped, and a NaN at coordinate 0
// keeps 0). Every lane of the group returns it.
template <int GROUP, class T>
__device__ int group_argmax_abs_difference(const T* a, const T* b, int d, int lane, bool valid) {
  T best = T(-1);
  int arg = INT_MAX;
  if (valid)
    for (int c = lane; c < d; c += GROUP) {
      const T v = magnitude(a[c] - b[c]);
      if (v > best) {
        best = v;
        arg = c;
      }
    }
#pragma unroll
  for (int s = GROUP / 2; s > 0; s /= 2) {
    const T other_best = __shfl_xor_sync(kFullMask, best, s);
    const int other_arg = __shfl_xor_sync(kFullMask, arg, s);
    if (other_best > best || (other_best == best && other_arg < arg)) {
      best = other_best;
      arg = other_arg;
    }
  }
  if (!valid || arg == INT_MAX || isnan(magnitude(a[0] - b[0]))) return 0;
  return arg;
}

// ---------------------------------------------------------------------------------------------
// Row epilogues (all lanes of the row's group call them, with uniform control flow)
// ---------------------------------------------------------------------------------------------

// dh/dz contributions of query row i with k-th neighbour j and weight w, by float atomics:
// +scale * w * dr/dz_i on row i and the opposite on row j.
template <class T, Norm N, int GROUP>
__device__ void scatter_gradient(const Params<T>& p, int i, int j, T w, int lane, bool valid) {
  const T scale = static_cast<T>(p.scale);
  const int64_t d = p.d;
  const T* zi = p.z + (valid ? i * d : 0);
  const T* zj = p.z + (valid ? j * d : 0);
  if (N == Norm::Linf) {
    const int c = group_argmax_abs_difference<GROUP>(zi, zj, p.d, lane, valid);
    if (valid && lane == 0) {
      const T v = scale * (w * sign_of_difference(zi[c], zj[c]));
      atomicAdd(p.grad + i * d + c, v);
      atomicAdd(p.grad + j * d + c, -v);
    }
    return;
  }
  if (!valid) return;
  for (int c = lane; c < p.d; c += GROUP) {
    const T direction = N == Norm::L2 ? zi[c] - zj[c] : sign_of_difference(zi[c], zj[c]);
    const T v = scale * (w * direction);
    atomicAdd(p.grad + i * d + c, v);
    atomicAdd(p.grad + j * d + c, -v);
  }
}

// The epilogue of query row r = block * ROWS + local_row (global row i = row_begin + r).
// `slots` gives the row's sorted top list: slots.get(s, &key, &j) for s < k.
template <class T, Norm N, int GROUP, class Slots>
__device__ void finish_row(const Params<T>& p, int r, int local_row, int lane, const Slots& slots,
                           double* s_terms) {
  const bool valid = r < p.m;
  const int i = p.row_begin + r;
  if (p.knn_mode) {
    if (!valid) return;
    for (int s = lane; s < p.k; s += GROUP) {
      T key;
      int j;
      slots.get(s, &key, &j);
      key = reported_key(p, key, i, j);
      const int64_t o = static_cast<int64_t>(i) * p.k + s;
      p.dist[o] = N == Norm::L2 ? exact_sqrt(key) : key;
      p.idx[o] = j;
    }
    return;
  }
  T key;
  int j;
  slots.get(p.k - 1, &key, &j);
  double term = 0.0;
  T w = T(0);
  if (valid) {
    key = reported_key(p, key, i, j);
    term = log_distance_term(static_cast<double>(key), N, p.eps);
    w = isfinite(term) ? gradient_weight(key, N, static_cast<T>(p.eps)) : T(NAN);
    if (lane == 0) {
      if (p.nbr_out != nullptr) p.nbr_out[r] = j;
      if (p.save_rows) {
        p.nbr32[r] = j;
        p.rows32[r] = r;
        p.weight[r] = w;
      }
    }
  }
  if (lane == 0) s_terms[local_row] = term;  // 0 for rows past the range
  if (p.atomic_grad) scatter_gradient<T, N, GROUP>(p, i, j, w, lane, valid);
}

}  // namespace detail
}  // namespace cuda
}  // namespace eae
