// The gradient and the value h: one warp computes one row's dh/dz, summed in the CPU kernel's
// order (RowGradient); the partial sums of the search blocks give h in a fixed order; the fused
// path's gradient blocks and the reverse-gather path's gather kernel.
#pragma once

#include "kernel_params.cuh"
#include "ptx.cuh"
#include "row_epilogue.cuh"

namespace eae {
namespace cuda {
namespace detail {

// dh/dz_i for coordinates [c0, c0 + 32 * kGradCoords), summed exactly as the CPU kernel does:
// g = 0; g += w * dr(z_i, z_j) for the row's own neighbour, then for every row that chose i in
// ascending order; g *= d / n. Lane l holds coordinates c0 + l + 32 q.
template <class T, Norm N>
struct RowGradient {
  const T* z;
  const T* zi;
  int d, c0, lane;
  T a[kGradCoords];  // z_i
  T g[kGradCoords];

  // Row i of z (add(j, w) then takes row j of z), or any row zi (then add_row).
  __device__ RowGradient(const T* z_, int d_, int i, int c0_, int lane_)
      : RowGradient(z_ + static_cast<int64_t>(i) * d_, d_, c0_, lane_) {
    z = z_;
  }
  __device__ RowGradient(const T* zi_, int d_, int c0_, int lane_) : z(nullptr), zi(zi_), d(d_), c0(c0_), lane(lane_) {
#pragma unroll
    for (int q = 0; q < kGradCoords; ++q) {
      const int c = c0 + lane + 32 * q;
      a[q] = c < d ? zi[c] : T(0);
      g[q] = T(0);
    }
  }

  // g += w * dr(z_i, z_j) / dz_i. All 32 lanes call it (uniformly).
  __device__ void add(int j, T w) { add_row(z + static_cast<int64_t>(j) * d, w); }

  // g += w * dr(z_i, b) / dz_i for any row b (such as a row of another set).
  __device__ void add_row(const T* zj, T w) {
    if (N == Norm::Linf) {
      const int m = group_argmax_abs_difference<32>(zi, zj, d, lane, true);
#pragma unroll
      for (int q = 0; q < kGradCoords; ++q)
        if (c0 + lane + 32 * q == m) g[q] = rn_add(g[q], rn_mul(w, sign_of_difference(a[q], zj[m])));
    } else {
#pragma unroll
      for (int q = 0; q < kGradCoords; ++q) {
        const int c = c0 + lane + 32 * q;
        if (c < d) {
          const T direction = N == Norm::L2 ? a[q] - zj[c] : sign_of_difference(a[q], zj[c]);
          g[q] = rn_add(g[q], rn_mul(w, direction));
        }
      }
    }
  }

  __device__ void store(T* grad_row, T scale) const {
#pragma unroll
    for (int q = 0; q < kGradCoords; ++q) {
      const int c = c0 + lane + 32 * q;
      if (c < d) grad_row[c] = rn_mul(g[q], scale);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Block completion and h
// ---------------------------------------------------------------------------------------------

// h from the partial sums of the S search blocks, in a fixed order (deterministic). All threads
// of one block call it.
template <class T>
__device__ void write_h(const Params<T>& p) {
  __shared__ double red[kThreads];
  double s = 0.0;
  for (int q = threadIdx.x; q < p.search_blocks; q += kThreads) s += __ldcg(p.partial + q);
  red[threadIdx.x] = s;
  __syncthreads();
#pragma unroll
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) red[threadIdx.x] += red[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) *p.h = static_cast<T>(p.constant + p.scale * red[0]);
}

// After a search block's rows are finished: its partial sum, then "one more search block done";
// the last one writes h unless gradient blocks (fused path) take care of it.
template <class T>
__device__ void finish_search_block(const Params<T>& p, int block, const double* s_terms, int rows) {
  __shared__ bool s_last;
  __threadfence();  // this thread's nbr32 / weight / grad writes, before the count below
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int r = 0; r < rows; ++r) sum += s_terms[r];
    p.partial[block] = sum;
    __threadfence();
    const unsigned finished = atomicAdd(p.counters, 1u);
    s_last = p.grad_blocks == 0 && finished + 1 == static_cast<unsigned>(p.search_blocks);
  }
  __syncthreads();
  if (s_last) {
    __threadfence();
    write_h(p);
  }
}

// Fused path: gradient block g (rows [32 g, 32 g + 32) of all n rows) once every search block
// has finished.
template <class T, Norm N>
__device__ void fused_gradient_block(const Params<T>& p, int g, unsigned char* smem) {
  if (threadIdx.x == 0) {
    while (load_acquire(p.counters) < static_cast<unsigned>(p.search_blocks)) __nanosleep(100);
    __threadfence();
  }
  __syncthreads();
  if (g == 0) write_h(p);

  // Every query row's neighbour and weight, from L2 (written by other blocks of this launch).
  int* s_nbr = reinterpret_cast<int*>(smem);
  T* s_weight = reinterpret_cast<T*>(smem + kFusedMaxRows * sizeof(int));
  for (int r = threadIdx.x; r < p.m; r += kThreads) {
    s_nbr[r] = __ldcg(p.nbr32 + r);
    s_weight[r] = __ldcg(p.weight + r);
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T scale = static_cast<T>(p.scale);
  const int end = min(p.n, (g + 1) * kGradRowsPerBlock);
  for (int i = g * kGradRowsPerBlock + warp; i < end; i += kWarps) {
    RowGradient<T, N> row(p.z, p.d, i, 0, lane);
    const int own = i - p.row_begin;
    if (own >= 0 && own < p.m) row.add(s_nbr[own], s_weight[own]);
    for (int base = 0; base < p.m; base += 32) {
      const int r = base + lane;
      unsigned chose_i = __ballot_sync(kFullMask, r < p.m && s_nbr[r] == i);
      while (chose_i) {  // ascending r
        const int b = __ffs(chose_i) - 1;
        chose_i &= chose_i - 1;
        row.add(p.row_begin + base + b, s_weight[base + b]);
      }
    }
    row.store(p.grad + static_cast<int64_t>(i) * p.d, scale);
  }
}

// Shared memory of a fused gradient block: every query row's neighbour and weight.
template <class T>
constexpr int kFusedGradientSmem = kFusedMaxRows * static_cast<int>(sizeof(int) + sizeof(T));

__device__ inline int lower_bound(const int* a, int len, int x) {
  int lo = 0, hi = len;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Reverse-gather path: one warp per row i of all n rows. The rows that chose i are the run of
// i in sorted_nbr; the stable sort kept them in ascending order.
template <class T, Norm N>
__global__ void __launch_bounds__(kThreads)
    gather_gradient_kernel(const __grid_constant__ Params<T> p, const int* sorted_nbr, const int* sorted_rows) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kWarps + threadIdx.x / 32;
  if (i >= p.n) return;  // uniform in the warp
  const int first = lower_bound(sorted_nbr, p.m, i), last = lower_bound(sorted_nbr, p.m, i + 1);
  const int own = i - p.row_begin;
  const bool has_own = own >= 0 && own < p.m;
  const T scale = static_cast<T>(p.scale);
  for (int c0 = 0; c0 < p.d; c0 += 32 * kGradCoords) {
    RowGradient<T, N> row(p.z, p.d, i, c0, lane);
    if (has_own) row.add(p.nbr32[own], p.weight[own]);
    for (int q = first; q < last; ++q) {
      const int r = sorted_rows[q];
      row.add(p.row_begin + r, p.weight[r]);
    }
    row.store(p.grad + static_cast<int64_t>(i) * p.d, scale);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace eae
