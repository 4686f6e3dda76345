// Building blocks of the CUDA search that are plain arithmetic, written __host__ __device__ so
// that the host test (csrc/cuda/tests/test_topk_host.cpp) checks them with g++ on a machine
// without a GPU: the per-coordinate distance accumulation, the register-resident top-k list of
// one thread, the merge of two such lists, and the thread <-> (row, column) maps of a tile.
//
// Order of candidates everywhere: core/kl_math.h's knn_before, i.e. by key with NaN as +inf,
// then by the lower index. It is a total order on (key, index) pairs with distinct indices, so
// the k smallest candidates of a row are the same set whichever thread saw which column and in
// whichever order the partial lists are merged: the CUDA result equals the CPU one exactly,
// given the same keys (and the keys are the same fp32/fp64 sums in the same order, see
// accumulate()).
#pragma once

#include <cstdint>
#include <cstring>

#include "../core/kl_math.h"

#if defined(__CUDACC__)
#define EAE_CUDA_HD __host__ __device__ __forceinline__
#else
#include <cmath>
// Host build (the test): plain inline; core/kl_math.h's host EAE_HD (static) cannot qualify members.
#define EAE_CUDA_HD inline
#endif
// Unrolling matters on the device only (register arrays); host compilers do not know the pragma.
#if defined(__CUDA_ARCH__)
#define EAE_UNROLL _Pragma("unroll")
#else
#define EAE_UNROLL
#endif

namespace eae {
namespace cuda {

// ---- Distance accumulation: one coordinate at a time, coordinates in ascending order ----

// fma(a, b, c) rounded once, on the device and on the host.
EAE_CUDA_HD float fused_multiply_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
EAE_CUDA_HD double fused_multiply_add(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// max(a, b) of two non-negative values or NaNs, NaN winning: on the bit patterns, a NaN with a
// clear sign bit is above +inf, which is above every finite non-negative value. (fmax would
// drop the NaN, and the key of a row holding NaN must not look finite.)
EAE_CUDA_HD float max_propagating_nan(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(max(__float_as_int(a), __float_as_int(b)));
#else
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return ia > ib ? a : b;
#endif
}
EAE_CUDA_HD double max_propagating_nan(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(max(__double_as_longlong(a), __double_as_longlong(b)));
#else
  int64_t ia, ib;
  std::memcpy(&ia, &a, 8);
  std::memcpy(&ib, &b, 8);
  return ia > ib ? a : b;
#endif
}

// |x| with the sign bit cleared, also for NaN (max_propagating_nan relies on it).
EAE_CUDA_HD float magnitude(float x) {
#if defined(__CUDA_ARCH__)
  return fabsf(x);
#else
  return std::fabs(x);
#endif
}
EAE_CUDA_HD double magnitude(double x) {
#if defined(__CUDA_ARCH__)
  return fabs(x);
#else
  return std::fabs(x);
#endif
}

// key <- key (+) one coordinate's difference: the squared distance for L2 (no sqrt in the hot
// loop), the distance for L1 and Linf. The same operations in the same order as the CPU
// kernels' AVX2/AVX-512 paths (fma, add of |diff|, max), so the keys are bit-identical to them.
// A NaN or inf in either row makes the key NaN or +inf, never finite.
template <Norm N, class T>
EAE_CUDA_HD T accumulate(T key, T diff) {
  if (N == Norm::L2) return fused_multiply_add(diff, diff, key);
  const T a = magnitude(diff);
  if (N == Norm::L1) return key + a;
  return max_propagating_nan(key, a);
}

// ---- The top-k list of one thread, in registers ----

// The K best (key, index) candidates seen so far, sorted by knn_before. All loops are unrolled
// over the compile-time K, so the arrays stay in registers. An empty slot is (+inf, sentinel),
// sentinel = the number of rows: every real candidate displaces it.
template <class T, int K>
struct TopK {
  T key[K];
  int idx[K];

  EAE_CUDA_HD void reset(int sentinel) {
EAE_UNROLL
    for (int s = 0; s < K; ++s) {
      key[s] = T(INFINITY);
      idx[s] = sentinel;
    }
  }

  // Whether (k, j) would enter the list.
  EAE_CUDA_HD bool admits(T k, int j) const { return knn_before(k, j, key[K - 1], idx[K - 1]); }

  // Puts (k, j) in the last slot and bubbles it up: O(K), branch-free, registers only.
  EAE_CUDA_HD void insert(T k, int j) {
    key[K - 1] = k;
    idx[K - 1] = j;
EAE_UNROLL
    for (int s = K - 1; s > 0; --s) {
      if (knn_before(key[s], idx[s], key[s - 1], idx[s - 1])) {
        const T tk = key[s];
        key[s] = key[s - 1];
        key[s - 1] = tk;
        const int ti = idx[s];
        idx[s] = idx[s - 1];
        idx[s - 1] = ti;
      }
    }
  }

  EAE_CUDA_HD void consider(T k, int j) {
    if (admits(k, j)) insert(k, j);
  }

  // Slot s (0 <= s < K) for a run-time s, without dynamic register indexing.
  EAE_CUDA_HD void get(int s, T* k, int* j) const {
    *k = key[0];
    *j = idx[0];
EAE_UNROLL
    for (int t = 1; t < K; ++t)
      if (t == s) {
        *k = key[t];
        *j = idx[t];
      }
  }
};

template <class T>
EAE_CUDA_HD void compare_exchange(T& ka, int& ia, T& kb, int& ib) {
  if (knn_before(kb, ib, ka, ia)) {
    const T tk = ka;
    ka = kb;
    kb = tk;
    const int ti = ia;
    ia = ib;
    ib = ti;
  }
}

// a <- the K smallest of a and b, sorted (both sorted on entry; K a power of two). Taking the
// elementwise minimum of a and reversed b gives those K as a bitonic sequence (Batcher), which
// log2(K) rounds of half-cleaners sort. Fixed indices only: everything stays in registers.
template <class T, int K>
EAE_CUDA_HD void merge_into(TopK<T, K>& a, const TopK<T, K>& b) {
  static_assert((K & (K - 1)) == 0, "K must be a power of two");
EAE_UNROLL
  for (int t = 0; t < K; ++t) {
    if (knn_before(b.key[K - 1 - t], b.idx[K - 1 - t], a.key[t], a.idx[t])) {
      a.key[t] = b.key[K - 1 - t];
      a.idx[t] = b.idx[K - 1 - t];
    }
  }
EAE_UNROLL
  for (int half = K / 2; half > 0; half /= 2)
EAE_UNROLL
    for (int t = 0; t < K; ++t)
      if ((t & half) == 0) compare_exchange(a.key[t], a.idx[t], a.key[t + half], a.idx[t + half]);
}

// ---- Tile geometry ----

// One block computes the distances of BM query rows to BN candidate columns at a time, in
// chunks of BD coordinates staged in shared memory. Thread t = ty * COL_THREADS + tx owns the
// TM x TN micro-tile of rows ty + ROW_THREADS * r and columns tx + COL_THREADS * c: the
// COL_THREADS threads of one ty share rows, are adjacent lanes of one warp, and merge their
// lists with xor shuffles. Strided (not contiguous) ownership keeps the shared-memory reads of a
// warp on distinct banks (see kl_cuda.cu).
template <class T, int K_, int TM_, int TN_, int ROW_THREADS_, int COL_THREADS_, int BD_>
struct TileConfig {
  using Scalar = T;
  static constexpr int K = K_;                    // list capacity (power of two)
  static constexpr int TM = TM_, TN = TN_;        // micro-tile: rows x columns per thread
  static constexpr int ROW_THREADS = ROW_THREADS_;
  static constexpr int COL_THREADS = COL_THREADS_;  // lanes sharing a row (power of two <= 32)
  static constexpr int THREADS = ROW_THREADS * COL_THREADS;
  static constexpr int BM = TM * ROW_THREADS;     // query rows per block
  static constexpr int BN = TN * COL_THREADS;     // candidate columns per tile
  static constexpr int BD = BD_;                  // coordinates per shared-memory chunk
  static constexpr int V = 16 / int(sizeof(T));   // elements per 16-byte vector
  static constexpr int LD = BD + V;               // padded shared row stride, in elements
  static constexpr int STAGE = (BM + BN) * LD;    // elements of one pipeline stage
  static constexpr int SMEM_BYTES = 2 * STAGE * int(sizeof(T));

  static_assert(THREADS == 256, "the kernels are written for 256 threads per block");
  static_assert(COL_THREADS <= 32 && (COL_THREADS & (COL_THREADS - 1)) == 0, "row group = lanes of a warp");
  static_assert(BD % V == 0, "a chunk is a whole number of 16-byte vectors");

  // Block-local query row of micro-tile row r of thread row ty.
  EAE_CUDA_HD static int row_of(int ty, int r) { return ty + ROW_THREADS * r; }
  // Tile-local candidate column of micro-tile column c of thread column tx.
  EAE_CUDA_HD static int col_of(int tx, int c) { return tx + COL_THREADS * c; }
};

// The configurations the kernels use (kl_cuda.cu), all with 256 threads.
// Large: BM x BN = 128 x 128 for k = 1 in fp32 (8 x 8 per thread); fewer rows per thread for
// longer lists, so that the lists stay in registers.
template <class T, int K>
struct LargeTile;
template <int K>
struct LargeTile<float, K> {
  using type = TileConfig<float, K, (K == 1 ? 8 : K == 4 ? 4 : 2), 8, 16, 16, 16>;
};
template <int K>
struct LargeTile<double, K> {
  using type = TileConfig<double, K, (K == 1 ? 4 : K == 4 ? 2 : 1), 4, 16, 16, 8>;
};
// Small: 8 rows per block, one warp per row, for batches too small to fill the GPU with large tiles.
template <class T, int K>
struct SmallTile;
template <int K>
struct SmallTile<float, K> {
  using type = TileConfig<float, K, 1, 4, 8, 32, 32>;
};
template <int K>
struct SmallTile<double, K> {
  using type = TileConfig<double, K, 1, 2, 8, 32, 16>;
};

}  // namespace cuda
}  // namespace eae
