// Searcher 2: one warp per query row, the running list in global memory (any k; used for
// k > 16, where register lists would spill).
#pragma once

#include "kernel_params.cuh"
#include "row_epilogue.cuh"

namespace eae {
namespace cuda {
namespace detail {

template <class T>
struct GlobalSlots {
  const T* key;
  const int* idx;
  int sentinel;
  __device__ void get(int s, T* k, int* j) const {
    if (key == nullptr) {
      *k = T(INFINITY);
      *j = sentinel;
    } else {
      *k = key[s];
      *j = idx[s];
    }
  }
};

// The k nearest of the n rows of ref (n x d) to the query q, skipping row ``exclude`` (-1: none),
// into the list keys/idx (k slots in global memory, sorted, sentinel index n), by one warp:
// each lane computes the key of one of 32 columns at a time, and lane 0 merges the candidates
// that beat the list's last entry in ascending column order, so ties keep the lower index.
template <class T, Norm N>
__device__ void search_global(const T* ref, int n, const T* q, int d, int exclude, int k, T* keys, int* idx,
                              int lane) {
  for (int s = lane; s < k; s += 32) {
    keys[s] = T(INFINITY);
    idx[s] = n;
  }
  __syncwarp();
  T threshold_key = T(INFINITY);
  int threshold_idx = n;
  for (int base = 0; base < n; base += 32) {
    const int j = base + lane;
    T key = T(0);
    if (j < n) {
      const T* rj = ref + static_cast<int64_t>(j) * d;
      for (int c = 0; c < d; ++c) key = accumulate<N>(key, rj[c] - q[c]);
    }
    const bool candidate = j < n && j != exclude;
    unsigned mask = __ballot_sync(kFullMask, candidate && knn_before(key, j, threshold_key, threshold_idx));
    while (mask) {  // merge the candidates in ascending column order
      const int b = __ffs(mask) - 1;
      const T kb = __shfl_sync(kFullMask, key, b);
      const int jb = __shfl_sync(kFullMask, j, b);
      if (lane == 0) topk_insert(keys, idx, k, kb, jb);
      __syncwarp();
      threshold_key = keys[k - 1];
      threshold_idx = idx[k - 1];
      __syncwarp();
      const unsigned later = b == 31 ? 0u : (kFullMask << (b + 1));
      mask = __ballot_sync(kFullMask, candidate && knn_before(key, j, threshold_key, threshold_idx)) & later;
    }
  }
}

template <class T>
struct ListSearch {
  static constexpr int ROWS = kWarps;
  static constexpr int SMEM_BYTES = 0;


  template <Norm N>
  static __device__ void search_row(const Params<T>& p, int i, T* keys, int* idx, int lane) {
    search_global<T, N>(p.z, p.n, p.z + static_cast<int64_t>(i) * p.d, p.d, i, p.k, keys, idx, lane);
  }

  template <Norm N>
  static __device__ void run(const Params<T>& p, int block, unsigned char* /*smem*/, double* s_terms) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int r = block * ROWS + warp;
    const bool valid = r < p.m;  // uniform in the warp
    T* keys = valid ? p.list_key + static_cast<int64_t>(r) * p.k : nullptr;
    int* idx = valid ? p.list_idx + static_cast<int64_t>(r) * p.k : nullptr;
    if (valid) search_row<N>(p, p.row_begin + r, keys, idx, lane);
    __syncwarp();
    finish_row<T, N, 32>(p, r, warp, lane, GlobalSlots<T>{keys, idx, p.n}, s_terms);
  }
};

}  // namespace detail
}  // namespace cuda
}  // namespace eae
