// The KSG range-count kernel (ksg_cuda.h). One thread per row i; a block of kThreads rows stages
// kTileRows rows at a time in shared memory, kChunk coordinates at a time, and every thread
// keeps the running max-norm distances of its row to the tile's rows in registers. All threads of
// a block read the same staged value (a shared-memory broadcast), and the row's own values are
// read once per chunk. Untuned (no GPU was available to time it): correctness first.
#include "ksg_cuda.h"

namespace eae {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // rows per block
constexpr int kTileRows = 32;  // columns (other rows) per tile: the per-thread register tile
constexpr int kChunk = 32;     // coordinates staged per step

template <class T, bool kInclusive>
__global__ void __launch_bounds__(kThreads)
    range_count_kernel(const T* __restrict__ z, int n, int d, const T* __restrict__ radius,
                       long long* __restrict__ counts) {
  __shared__ T tile[kTileRows][kChunk + 1];  // +1: no bank conflicts on the transposed fill
  const int i = blockIdx.x * kThreads + threadIdx.x;
  const bool row_ok = i < n;
  const T r = row_ok ? radius[i] : T(0);
  long long count = 0;
  for (int j0 = 0; j0 < n; j0 += kTileRows) {
    T dist[kTileRows];
#pragma unroll
    for (int t = 0; t < kTileRows; ++t) dist[t] = T(0);
    for (int c0 = 0; c0 < d; c0 += kChunk) {
      __syncthreads();
      for (int e = threadIdx.x; e < kTileRows * kChunk; e += kThreads) {
        const int t = e / kChunk, c = e % kChunk;
        tile[t][c] = (j0 + t < n && c0 + c < d) ? z[static_cast<long long>(j0 + t) * d + c0 + c] : T(0);
      }
      __syncthreads();
      if (row_ok) {
        const int cend = d - c0 < kChunk ? d - c0 : kChunk;
        for (int c = 0; c < cend; ++c) {
          const T a = z[static_cast<long long>(i) * d + c0 + c];
#pragma unroll
          for (int t = 0; t < kTileRows; ++t) {
            const T diff = a - tile[t][c];
            const T ad = diff < T(0) ? -diff : diff;
            dist[t] = dist[t] > ad ? dist[t] : ad;
          }
        }
      }
    }
    if (row_ok) {
#pragma unroll
      for (int t = 0; t < kTileRows; ++t) {
        const int j = j0 + t;
        const bool within = kInclusive ? dist[t] <= r : dist[t] < r;
        count += (j < n && j != i && within) ? 1 : 0;
      }
    }
  }
  if (row_ok) counts[i] = count;
}

}  // namespace

template <class T>
cudaError_t range_count_linf(const T* z, int64_t n, int64_t d, const T* radius, bool inclusive,
                             int64_t* counts, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  long long* out = reinterpret_cast<long long*>(counts);
  if (inclusive)
    range_count_kernel<T, true><<<grid, kThreads, 0, stream>>>(z, static_cast<int>(n), static_cast<int>(d), radius, out);
  else
    range_count_kernel<T, false><<<grid, kThreads, 0, stream>>>(z, static_cast<int>(n), static_cast<int>(d), radius, out);
  return cudaGetLastError();
}

template cudaError_t range_count_linf<float>(const float*, int64_t, int64_t, const float*, bool, int64_t*,
                                             cudaStream_t);
template cudaError_t range_count_linf<double>(const double*, int64_t, int64_t, const double*, bool,
                                              int64_t*, cudaStream_t);

}  // namespace cuda
}  // namespace eae
