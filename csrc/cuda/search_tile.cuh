// Searcher 1: register tiles (k <= 16). A block stages BM query rows and BN candidate columns
// per chunk of BD coordinates in double-buffered shared memory (cp.async); each thread keeps a
// TM x TN micro-tile of keys and a sorted top-K list per row in registers; at the end the
// COL_THREADS lanes of a row merge their lists with xor shuffles.
#pragma once

#include "kernel_params.cuh"
#include "ptx.cuh"
#include "row_epilogue.cuh"
#include "topk.cuh"

namespace eae {
namespace cuda {
namespace detail {

template <class T, int K>
struct RegisterSlots {
  const TopK<T, K>& list;
  __device__ void get(int s, T* key, int* j) const { list.get(s, key, j); }
};

// Every lane of a row group ends with the group's merged list.
template <int GROUP, class T, int K>
__device__ void merge_group(TopK<T, K>& list) {
#pragma unroll
  for (int s = 1; s < GROUP; s *= 2) {
    TopK<T, K> other;
#pragma unroll
    for (int t = 0; t < K; ++t) {
      other.key[t] = __shfl_xor_sync(kFullMask, list.key[t], s);
      other.idx[t] = __shfl_xor_sync(kFullMask, list.idx[t], s);
    }
    merge_into(list, other);
  }
}

template <class Cfg>
struct TileSearch {
  using T = typename Cfg::Scalar;
  using VecT = typename Vec16<T>::type;
  static constexpr int ROWS = Cfg::BM;
  static constexpr int SMEM_BYTES = Cfg::SMEM_BYTES;
  static constexpr int TM = Cfg::TM, TN = Cfg::TN, BM = Cfg::BM, BN = Cfg::BN, BD = Cfg::BD;
  static constexpr int V = Cfg::V, LD = Cfg::LD, GROUP = Cfg::COL_THREADS;

  // Stage chunk `chunk` of the block's query rows (As: BM x BD) and of candidate tile `tile`
  // (Bs: BN x BD) into dst = [As | Bs], rows padded to LD. Out-of-range rows, columns and
  // coordinates are zero-filled: zero coordinates add nothing to any key, and out-of-range
  // columns are never considered (j < n below).
  static __device__ void load_stage(const Params<T>& p, T* dst, int row0, int tile, int chunk) {
    const int c0 = chunk * BD;
    if (p.vector_loads) {
      constexpr int kPerRow = BD / V;
#pragma unroll
      for (int v = threadIdx.x; v < (BM + BN) * kPerRow; v += kThreads) {
        const int srow = v / kPerRow, cv = (v % kPerRow) * V;
        const bool query = srow < BM;
        const int row = query ? p.row_begin + row0 + srow : tile * BN + (srow - BM);
        const bool ok = (query ? row0 + srow < p.m : row < p.n) && c0 + cv < p.d;
        const T* src = ok ? p.z + static_cast<int64_t>(row) * p.d + c0 + cv : p.z;
        cp_async_16(dst + srow * LD + cv, src, ok);
      }
    } else {
#pragma unroll 4
      for (int v = threadIdx.x; v < (BM + BN) * BD; v += kThreads) {
        const int srow = v / BD, c = v % BD;
        const bool query = srow < BM;
        const int row = query ? p.row_begin + row0 + srow : tile * BN + (srow - BM);
        const bool ok = (query ? row0 + srow < p.m : row < p.n) && c0 + c < p.d;
        const T* src = ok ? p.z + static_cast<int64_t>(row) * p.d + c0 + c : p.z;
        cp_async_element<sizeof(T)>(dst + srow * LD + c, src, ok);
      }
    }
  }

  template <Norm N>
  static __device__ void compute_chunk(const T* As, const T* Bs, T (&acc)[TM][TN], int tx, int ty) {
#pragma unroll
    for (int c = 0; c < BD; c += V) {
      VecT b[TN];
#pragma unroll
      for (int q = 0; q < TN; ++q) b[q] = *reinterpret_cast<const VecT*>(Bs + Cfg::col_of(tx, q) * LD + c);
#pragma unroll
      for (int r = 0; r < TM; ++r) {
        const VecT a = *reinterpret_cast<const VecT*>(As + Cfg::row_of(ty, r) * LD + c);
#pragma unroll
        for (int q = 0; q < TN; ++q)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[r][q] = accumulate<N>(acc[r][q], elem(b[q], e) - elem(a, e));
      }
    }
  }

  template <Norm N>
  static __device__ void run(const Params<T>& p, int block, unsigned char* smem, double* s_terms) {
    T* stage0 = reinterpret_cast<T*>(smem);
    T* stage1 = stage0 + Cfg::STAGE;
    const int tx = threadIdx.x % Cfg::COL_THREADS, ty = threadIdx.x / Cfg::COL_THREADS;
    const int row0 = block * BM;  // first query row of the block, relative to row_begin

    TopK<T, Cfg::K> list[TM];
#pragma unroll
    for (int r = 0; r < TM; ++r) list[r].reset(p.n);
    T acc[TM][TN];
#pragma unroll
    for (int r = 0; r < TM; ++r)
#pragma unroll
      for (int q = 0; q < TN; ++q) acc[r][q] = T(0);

    const int chunks = (p.d + BD - 1) / BD;
    const int steps = ((p.n + BN - 1) / BN) * chunks;
    load_stage(p, stage0, row0, 0, 0);
    cp_async_commit();
    int tile = 0, chunk = 0;
    for (int step = 0; step < steps; ++step) {
      if (step + 1 < steps) {  // prefetch the next chunk into the other stage
        const bool next_tile = chunk + 1 == chunks;
        load_stage(p, (step & 1) ? stage0 : stage1, row0, tile + next_tile, next_tile ? 0 : chunk + 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const T* As = (step & 1) ? stage1 : stage0;
      compute_chunk<N>(As, As + BM * LD, acc, tx, ty);
      if (chunk + 1 == chunks) {  // the tile's distances are complete: merge the candidates
#pragma unroll
        for (int r = 0; r < TM; ++r) {
          const int i = p.row_begin + row0 + Cfg::row_of(ty, r);
#pragma unroll
          for (int q = 0; q < TN; ++q) {
            const int j = tile * BN + Cfg::col_of(tx, q);
            if (j < p.n && j != i) list[r].consider(acc[r][q], j);
            acc[r][q] = T(0);
          }
        }
        ++tile;
        chunk = 0;
      } else {
        ++chunk;
      }
      __syncthreads();  // the stage just read is refilled by the next iteration's prefetch
    }

#pragma unroll
    for (int r = 0; r < TM; ++r) {
      merge_group<GROUP>(list[r]);
      const int local_row = Cfg::row_of(ty, r);
      finish_row<T, N, GROUP>(p, row0 + local_row, local_row, tx, RegisterSlots<T, Cfg::K>{list[r]}, s_terms);
    }
  }
};

}  // namespace detail
}  // namespace cuda
}  // namespace eae
