// CUDA kernels for the k-nearest-neighbour search and the fused Kozachenko–Leonenko entropy.
//
// Work mapping. The query rows (a row range of z) are cut into blocks of ROWS rows; one CUDA
// block of 256 threads owns one such block and streams *all* n rows of z past it as candidate
// columns, BN columns per tile and BD coordinates per chunk, through double-buffered shared
// memory filled with cp.async. Each thread computes a TM x TN micro-tile of distances in
// registers as exact sums of (a - b)^2 (or |a - b|, or max |a - b|), coordinates in ascending
// order with one rounding per fma: the very keys of the CPU kernels, never ||a||^2 + ||b||^2 - 2ab.
// After the last chunk of a tile, each distance is tested against the thread's running top-K
// list of its row (registers, sorted, lower index first on ties). When all tiles are done, the
// COL_THREADS lanes that share a row merge their lists with xor shuffles (a bitonic merge per
// step), so every lane holds the row's exact top-K, and the row's epilogue runs:
//
//   knn:        write the k distances and indices;
//   kl_entropy: log term (double), gradient weight; the block's terms are summed in a fixed
//               order into one partial per block, and the last block to finish (or, in the
//               fused path, the first gradient block) sums the partials in a fixed order into h.
//
// The neighbour part of the gradient (row i also moves every row j whose k-th neighbour it is)
// takes one of three routes (Path in kl_cuda.h):
//
//   kFused (n <= 1024, d <= 256, the paper's regime): ONE kernel launch. Blocks take a ticket
//     from an atomic counter; the first S tickets search, the rest wait until the S searches
//     are done and then compute dh/dz, one warp per row, gathering the rows that chose it by
//     scanning all neighbour indices (from shared memory). A waiting block only waits for
//     blocks that took earlier tickets, which are already running, so this cannot deadlock
//     however the blocks are scheduled. No atomics on floats: deterministic.
//   kAtomic: the search epilogue adds row i's term to dh/dz_i and subtracts it from dh/dz_j
//     with float atomics (grad is zeroed first). Fast, not bit-reproducible.
//   kReverseGather (deterministic=True, larger n): the search saves each row's neighbour and
//     weight, a stable radix sort (CUB) groups the rows by neighbour, and a gather kernel sums,
//     per row and in ascending row order, exactly what the CPU kernel sums, in the same order.
//
// Three searchers fill the kernels: a "large" register tile (128 x 128 for k = 1 in fp32) when
// there are enough query rows to fill the GPU, a "small" tile of 8 rows per block (more blocks
// for small batches), and for k > 16 a simple warp-per-row search with the list in global memory.
//
// Everything launches on the caller's stream; nothing waits for the host; the only memory is
// the caller's workspace, so the calls are CUDA-graph capturable.
#include "kl_cuda.h"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "topk.cuh"

namespace eae {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// The fused path (one launch): batch sizes of the paper's regime.
constexpr int kFusedMaxRows = 1024;
constexpr int kFusedMaxDim = 256;
// Gradient of one row by one warp: 32 lanes x kGradCoords coordinates per pass.
constexpr int kGradCoords = 8;
constexpr int kGradRowsPerBlock = 32;  // fused path: 8 warps x 4 rows
// Register lists hold up to this many neighbours; larger k uses the list search.
constexpr int kMaxRegisterK = 16;

// ---------------------------------------------------------------------------------------------
// Parameters of every kernel (passed by value)
// ---------------------------------------------------------------------------------------------

template <class T>
struct Params {
  const T* z;  // (n, d) row-major
  int n, d, k;
  int row_begin, m;   // query rows [row_begin, row_begin + m)
  bool vector_loads;  // z is 16-byte aligned and d a multiple of 16 / sizeof(T)
  bool knn_mode;      // knn epilogue (else kl_entropy)

  // knn outputs: (n, k) each
  T* dist;
  int64_t* idx;

  // kl_entropy
  double eps;
  double scale;     // d / n
  double constant;  // psi(n) - psi(k) + log V, or 0 when row_begin > 0
  T* h;             // 0-dim output
  T* grad;          // (n, d) output, or null
  int64_t* nbr_out; // (m,) output, or null
  bool atomic_grad; // epilogue scatters dh/dz with atomics (grad zeroed beforehand)
  bool save_rows;   // epilogue saves nbr32 / rows32 / weight for a later gradient pass
  int* nbr32;       // (m,) k-th neighbour of each query row
  int* rows32;      // (m,) 0, 1, ..., m-1: the values the radix sort carries
  T* weight;        // (m,) gradient weight of each query row
  double* partial;  // (search_blocks,) sum of the terms of each search block
  unsigned* counters;  // [0]: search blocks finished, [1]: next ticket (fused path)
  int search_blocks;   // S
  int grad_blocks;     // fused path: gradient blocks launched after the S search blocks, else 0

  // list search (k > 16): (m, k) running lists
  T* list_key;
  int* list_idx;
};

// ---------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------

template <class T>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
};
template <>
struct Vec16<double> {
  using type = double2;
};

__device__ __forceinline__ float elem(const float4& v, int e) {
  return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}
__device__ __forceinline__ double elem(const double2& v, int e) { return e == 0 ? v.x : v.y; }

// IEEE operations that the compiler may not contract into an fma: the gradient sums are then
// the same roundings as the CPU kernel's (compiled without fma contraction).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// sign(a - b) as T, with sign(0) = 0 (the CPU kernel's sign_of_difference).
template <class T>
__device__ __forceinline__ T sign_of_difference(T a, T b) {
  return static_cast<T>(int(a > b) - int(a < b));
}

// cp.async: 16 bytes (zero-filled when !ok), or one element of 4 or 8 bytes.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool ok) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = ok ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes)
               : "memory");
}
template <int BYTES>
__device__ __forceinline__ void cp_async_element(void* smem, const void* gmem, bool ok) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int src_bytes = ok ? BYTES : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem), "n"(BYTES),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

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

__device__ __forceinline__ float exact_sqrt(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ double exact_sqrt(double x) { return __dsqrt_rn(x); }

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

// ---------------------------------------------------------------------------------------------
// Searcher 1: register tiles (k <= 16)
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Searcher 2: one warp per query row, the list in global memory (k > 16)
// ---------------------------------------------------------------------------------------------

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

template <class T>
struct ListSearch {
  static constexpr int ROWS = kWarps;
  static constexpr int SMEM_BYTES = 0;


  template <Norm N>
  static __device__ void search_row(const Params<T>& p, int i, T* keys, int* idx, int lane) {
    const int n = p.n, d = p.d, k = p.k;
    for (int s = lane; s < k; s += 32) {
      keys[s] = T(INFINITY);
      idx[s] = n;
    }
    __syncwarp();
    T threshold_key = T(INFINITY);
    int threshold_idx = n;
    const T* zi = p.z + static_cast<int64_t>(i) * d;
    for (int base = 0; base < n; base += 32) {
      const int j = base + lane;
      T key = T(0);
      if (j < n) {
        const T* zj = p.z + static_cast<int64_t>(j) * d;
        for (int c = 0; c < d; ++c) key = accumulate<N>(key, zj[c] - zi[c]);
      }
      const bool candidate = j < n && j != i;
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

// ---------------------------------------------------------------------------------------------
// The gradient of one row by one warp (fused path and reverse-gather path)
// ---------------------------------------------------------------------------------------------

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

  __device__ RowGradient(const T* z_, int d_, int i, int c0_, int lane_)
      : z(z_), zi(z_ + static_cast<int64_t>(i) * d_), d(d_), c0(c0_), lane(lane_) {
#pragma unroll
    for (int q = 0; q < kGradCoords; ++q) {
      const int c = c0 + lane + 32 * q;
      a[q] = c < d ? zi[c] : T(0);
      g[q] = T(0);
    }
  }

  // g += w * dr(z_i, z_j) / dz_i. All 32 lanes call it (uniformly).
  __device__ void add(int j, T w) {
    const T* zj = z + static_cast<int64_t>(j) * d;
    if (N == Norm::Linf) {
      const int m = group_argmax_abs_difference<32>(zi, zj, d, lane, true);
#pragma unroll
      for (int q = 0; q < kGradCoords; ++q)
        if (c0 + lane + 32 * q == m) g[q] = add_rn(g[q], mul_rn(w, sign_of_difference(a[q], zj[m])));
    } else {
#pragma unroll
      for (int q = 0; q < kGradCoords; ++q) {
        const int c = c0 + lane + 32 * q;
        if (c < d) {
          const T direction = N == Norm::L2 ? a[q] - zj[c] : sign_of_difference(a[q], zj[c]);
          g[q] = add_rn(g[q], mul_rn(w, direction));
        }
      }
    }
  }

  __device__ void store(T* grad_row, T scale) const {
#pragma unroll
    for (int q = 0; q < kGradCoords; ++q) {
      const int c = c0 + lane + 32 * q;
      if (c < d) grad_row[c] = mul_rn(g[q], scale);
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

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

template <class T, class Search, Norm N>
__global__ void __launch_bounds__(kThreads, 1) search_kernel(const __grid_constant__ Params<T> p) {
  constexpr int kSmem = Search::SMEM_BYTES > kFusedGradientSmem<T> ? Search::SMEM_BYTES : kFusedGradientSmem<T>;
  __shared__ alignas(16) unsigned char smem[kSmem];
  __shared__ double s_terms[Search::ROWS];
  __shared__ int s_ticket;

  int block = blockIdx.x;
  if (p.grad_blocks > 0) {  // fused path: the role comes from the order in which blocks start
    if (threadIdx.x == 0) s_ticket = static_cast<int>(atomicAdd(p.counters + 1, 1u));
    __syncthreads();
    block = s_ticket;
    if (block >= p.search_blocks) {
      fused_gradient_block<T, N>(p, block - p.search_blocks, smem);
      return;
    }
  }
  Search::template run<N>(p, block, smem, s_terms);
  if (!p.knn_mode) finish_search_block(p, block, s_terms, Search::ROWS);
}

__device__ int lower_bound(const int* a, int len, int x) {
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

// ---------------------------------------------------------------------------------------------
// Host side: the plan of a call, and the launches
// ---------------------------------------------------------------------------------------------

enum class Searcher : int { kSmall, kLarge, kList };

int list_capacity(int64_t k) { return k == 1 ? 1 : k <= 4 ? 4 : 16; }

template <class T>
int tile_rows(Searcher s, int capacity) {
  switch (s) {
    case Searcher::kLarge:
      return capacity == 1 ? LargeTile<T, 1>::type::BM : capacity == 4 ? LargeTile<T, 4>::type::BM : LargeTile<T, 16>::type::BM;
    case Searcher::kSmall: return SmallTile<T, 1>::type::BM;
    case Searcher::kList: default: return ListSearch<T>::ROWS;
  }
}

int rows_per_block(Searcher s, int capacity, bool is_double) {
  return is_double ? tile_rows<double>(s, capacity) : tile_rows<float>(s, capacity);
}

int multiprocessor_count() {
  static std::atomic<int> cache[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) return 1;
  if (device < 64) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count < 1) {
    cudaGetLastError();  // clear the error: the next launch must not report it
    return 1;
  }
  if (device < 64) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

// Tuning and test knobs, read on every call (so tests can switch them):
//   EAE_KERNELS_CUDA_TILE = small | large | list   forces the searcher (list works for any k,
//                                                   small and large for k <= 16)
//   EAE_KERNELS_CUDA_PATH = atomic | gather         forces the gradient path (atomic only when
//                                                   not deterministic); default: fused for
//                                                   n <= 1024 and d <= 256, else atomic, or
//                                                   gather when deterministic
bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

Searcher choose_searcher(int64_t m, int64_t k, bool is_double, bool fused) {
  if (env_is("EAE_KERNELS_CUDA_TILE", "list") || k > kMaxRegisterK) return Searcher::kList;
  if (env_is("EAE_KERNELS_CUDA_TILE", "small")) return Searcher::kSmall;
  if (env_is("EAE_KERNELS_CUDA_TILE", "large")) return Searcher::kLarge;
  if (fused) return Searcher::kSmall;
  // Large tiles reuse each staged value for 8x more distances than small ones (the small tile is
  // bound by shared-memory loads at about half the fp32 rate), so they win as soon as their row
  // blocks fill about half of the multiprocessors. (Estimated, not yet measured: see
  // scripts/gpu_check.sh, which times both.)
  const int rows = rows_per_block(Searcher::kLarge, list_capacity(k), is_double);
  const int64_t large_blocks = (m + rows - 1) / rows;
  return 2 * large_blocks >= multiprocessor_count() ? Searcher::kLarge : Searcher::kSmall;
}

constexpr size_t kAlign = 256;
size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int bit_width(int64_t x) {
  int b = 0;
  while (x > 0) {
    ++b;
    x >>= 1;
  }
  return b;
}

size_t radix_sort_temp_bytes(int m, int end_bit) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
                                  static_cast<const int*>(nullptr), static_cast<int*>(nullptr), m, 0, end_bit);
  return bytes;
}

// Where everything lives in the workspace (byte offsets, each 256-byte aligned).
struct Plan {
  Path path = Path::kForward;
  Searcher searcher = Searcher::kSmall;
  int capacity = 1;
  int search_blocks = 0, grad_blocks = 0;
  int end_bit = 1;
  size_t counters = 0, partial = 0, nbr32 = 0, rows32 = 0, weight = 0;
  size_t sorted_nbr = 0, sorted_rows = 0, sort_temp = 0, sort_temp_bytes = 0;
  size_t list_key = 0, list_idx = 0;
  size_t bytes = 0;
};

Path choose_path(const EntropyProblem& pr) {
  if (!pr.compute_grad) return Path::kForward;
  const bool fits_fused = pr.n <= kFusedMaxRows && pr.d <= kFusedMaxDim;
  if (env_is("EAE_KERNELS_CUDA_PATH", "gather")) return Path::kReverseGather;
  if (env_is("EAE_KERNELS_CUDA_PATH", "atomic") && !pr.deterministic) return Path::kAtomic;
  if (fits_fused) return Path::kFused;
  return pr.deterministic ? Path::kReverseGather : Path::kAtomic;
}

Plan plan_entropy(const EntropyProblem& pr, bool is_double) {
  Plan plan;
  const int64_t m = pr.row_end - pr.row_begin;
  const size_t scalar = is_double ? 8 : 4;
  plan.path = choose_path(pr);
  plan.searcher = choose_searcher(m, pr.k, is_double, plan.path == Path::kFused);
  plan.capacity = list_capacity(pr.k);
  const int rows = rows_per_block(plan.searcher, plan.capacity, is_double);
  plan.search_blocks = static_cast<int>((m + rows - 1) / rows);
  plan.grad_blocks = plan.path == Path::kFused ? static_cast<int>((pr.n + kGradRowsPerBlock - 1) / kGradRowsPerBlock) : 0;
  plan.end_bit = std::max(1, bit_width(pr.n - 1));

  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t offset = at;
    at += align_up(bytes);
    return offset;
  };
  plan.counters = take(2 * sizeof(unsigned));
  plan.partial = take(plan.search_blocks * sizeof(double));
  if (plan.path == Path::kFused || plan.path == Path::kReverseGather) {
    plan.nbr32 = take(m * sizeof(int));
    plan.rows32 = take(m * sizeof(int));
    plan.weight = take(m * scalar);
  }
  if (plan.path == Path::kReverseGather) {
    plan.sorted_nbr = take(m * sizeof(int));
    plan.sorted_rows = take(m * sizeof(int));
    plan.sort_temp_bytes = radix_sort_temp_bytes(static_cast<int>(m), plan.end_bit);
    plan.sort_temp = take(plan.sort_temp_bytes);
  }
  if (plan.searcher == Searcher::kList) {
    plan.list_key = take(m * pr.k * scalar);
    plan.list_idx = take(m * pr.k * sizeof(int));
  }
  plan.bytes = at;
  return plan;
}

Plan plan_knn(int64_t n, int64_t k, bool is_double) {
  Plan plan;
  plan.searcher = choose_searcher(n, k, is_double, false);
  plan.capacity = list_capacity(k);
  const int rows = rows_per_block(plan.searcher, plan.capacity, is_double);
  plan.search_blocks = static_cast<int>((n + rows - 1) / rows);
  size_t at = 0;
  if (plan.searcher == Searcher::kList) {
    plan.list_key = at;
    at += align_up(n * k * (is_double ? 8 : 4));
    plan.list_idx = at;
    at += align_up(n * k * sizeof(int));
  }
  plan.bytes = at;
  return plan;
}

template <class T, Norm N, class Search>
void launch_search(const Params<T>& p, int grid, cudaStream_t stream) {
  search_kernel<T, Search, N><<<grid, kThreads, 0, stream>>>(p);
}

template <class T, Norm N, int K>
void launch_register_search(Searcher s, const Params<T>& p, int grid, cudaStream_t stream) {
  if (s == Searcher::kLarge)
    launch_search<T, N, TileSearch<typename LargeTile<T, K>::type>>(p, grid, stream);
  else
    launch_search<T, N, TileSearch<typename SmallTile<T, K>::type>>(p, grid, stream);
}

template <class T, Norm N>
void launch_search_norm(const Plan& plan, const Params<T>& p, int grid, cudaStream_t stream) {
  if (plan.searcher == Searcher::kList) return launch_search<T, N, ListSearch<T>>(p, grid, stream);
  switch (plan.capacity) {
    case 1: return launch_register_search<T, N, 1>(plan.searcher, p, grid, stream);
    case 4: return launch_register_search<T, N, 4>(plan.searcher, p, grid, stream);
    default: return launch_register_search<T, N, 16>(plan.searcher, p, grid, stream);
  }
}

template <class T>
void launch_search_any(Norm norm, const Plan& plan, const Params<T>& p, int grid, cudaStream_t stream) {
  switch (norm) {
    case Norm::L1: return launch_search_norm<T, Norm::L1>(plan, p, grid, stream);
    case Norm::L2: return launch_search_norm<T, Norm::L2>(plan, p, grid, stream);
    case Norm::Linf: default: return launch_search_norm<T, Norm::Linf>(plan, p, grid, stream);
  }
}

template <class T>
void launch_gather(Norm norm, const Params<T>& p, const int* sorted_nbr, const int* sorted_rows,
                   cudaStream_t stream) {
  const int grid = static_cast<int>((p.n + kWarps - 1) / kWarps);
  switch (norm) {
    case Norm::L1: gather_gradient_kernel<T, Norm::L1><<<grid, kThreads, 0, stream>>>(p, sorted_nbr, sorted_rows); break;
    case Norm::L2: gather_gradient_kernel<T, Norm::L2><<<grid, kThreads, 0, stream>>>(p, sorted_nbr, sorted_rows); break;
    case Norm::Linf: default: gather_gradient_kernel<T, Norm::Linf><<<grid, kThreads, 0, stream>>>(p, sorted_nbr, sorted_rows); break;
  }
}

template <class T>
bool aligned_for_vectors(const T* z, int64_t d) {
  constexpr int64_t kV = 16 / sizeof(T);
  return d % kV == 0 && reinterpret_cast<uintptr_t>(z) % 16 == 0;
}

template <class T>
Params<T> base_params(const T* z, int64_t n, int64_t d, int64_t k) {
  Params<T> p;
  std::memset(&p, 0, sizeof(p));
  p.z = z;
  p.n = static_cast<int>(n);
  p.d = static_cast<int>(d);
  p.k = static_cast<int>(k);
  p.vector_loads = aligned_for_vectors(z, d);
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

Path entropy_path(const EntropyProblem& problem) { return choose_path(problem); }

size_t entropy_workspace_bytes(const EntropyProblem& problem, bool is_double) {
  if (problem.row_end <= problem.row_begin) return 0;
  return plan_entropy(problem, is_double).bytes;
}

size_t knn_workspace_bytes(int64_t n, int64_t /*d*/, int64_t k, bool is_double) {
  return plan_knn(n, k, is_double).bytes;
}

template <class T>
cudaError_t kl_entropy(const T* z, const EntropyProblem& pr, T* h, T* grad, int64_t* nbr, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream) {
  const bool is_double = sizeof(T) == 8;
  const int64_t m = pr.row_end - pr.row_begin;
  if (m <= 0) {  // no terms: h = 0 and a zero gradient
    cudaMemsetAsync(h, 0, sizeof(T), stream);
    if (grad != nullptr) cudaMemsetAsync(grad, 0, pr.n * pr.d * sizeof(T), stream);
    return cudaGetLastError();
  }
  const Plan plan = plan_entropy(pr, is_double);
  if (workspace_bytes < plan.bytes) return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);

  Params<T> p = base_params(z, pr.n, pr.d, pr.k);
  p.row_begin = static_cast<int>(pr.row_begin);
  p.m = static_cast<int>(m);
  p.knn_mode = false;
  p.eps = pr.eps;
  p.scale = static_cast<double>(pr.d) / static_cast<double>(pr.n);
  p.constant = pr.row_begin == 0 ? kl_constant(pr.n, pr.d, pr.k, pr.norm) : 0.0;
  p.h = h;
  p.grad = grad;
  p.nbr_out = nbr;
  p.atomic_grad = plan.path == Path::kAtomic;
  p.save_rows = plan.path == Path::kFused || plan.path == Path::kReverseGather;
  p.nbr32 = reinterpret_cast<int*>(ws + plan.nbr32);
  p.rows32 = reinterpret_cast<int*>(ws + plan.rows32);
  p.weight = reinterpret_cast<T*>(ws + plan.weight);
  p.partial = reinterpret_cast<double*>(ws + plan.partial);
  p.counters = reinterpret_cast<unsigned*>(ws + plan.counters);
  p.search_blocks = plan.search_blocks;
  p.grad_blocks = plan.grad_blocks;
  p.list_key = reinterpret_cast<T*>(ws + plan.list_key);
  p.list_idx = reinterpret_cast<int*>(ws + plan.list_idx);

  cudaMemsetAsync(p.counters, 0, 2 * sizeof(unsigned), stream);
  if (plan.path == Path::kAtomic) cudaMemsetAsync(grad, 0, pr.n * pr.d * sizeof(T), stream);
  launch_search_any<T>(pr.norm, plan, p, plan.search_blocks + plan.grad_blocks, stream);
  if (plan.path == Path::kReverseGather) {
    int* sorted_nbr = reinterpret_cast<int*>(ws + plan.sorted_nbr);
    int* sorted_rows = reinterpret_cast<int*>(ws + plan.sorted_rows);
    size_t temp_bytes = plan.sort_temp_bytes;
    const cudaError_t err = cub::DeviceRadixSort::SortPairs(ws + plan.sort_temp, temp_bytes, p.nbr32, sorted_nbr,
                                                            p.rows32, sorted_rows, p.m, 0, plan.end_bit, stream);
    if (err != cudaSuccess) return err;
    launch_gather<T>(pr.norm, p, sorted_nbr, sorted_rows, stream);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t knn(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, T* dist, int64_t* idx, void* workspace,
                size_t workspace_bytes, cudaStream_t stream) {
  const Plan plan = plan_knn(n, k, sizeof(T) == 8);
  if (workspace_bytes < plan.bytes) return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  Params<T> p = base_params(z, n, d, k);
  p.row_begin = 0;
  p.m = static_cast<int>(n);
  p.knn_mode = true;
  p.dist = dist;
  p.idx = idx;
  p.search_blocks = plan.search_blocks;
  p.list_key = reinterpret_cast<T*>(ws + plan.list_key);
  p.list_idx = reinterpret_cast<int*>(ws + plan.list_idx);
  launch_search_any<T>(norm, plan, p, plan.search_blocks, stream);
  return cudaGetLastError();
}

template cudaError_t kl_entropy<float>(const float*, const EntropyProblem&, float*, float*, int64_t*, void*,
                                       size_t, cudaStream_t);
template cudaError_t kl_entropy<double>(const double*, const EntropyProblem&, double*, double*, int64_t*, void*,
                                        size_t, cudaStream_t);
template cudaError_t knn<float>(const float*, int64_t, int64_t, int64_t, Norm, float*, int64_t*, void*, size_t,
                                cudaStream_t);
template cudaError_t knn<double>(const double*, int64_t, int64_t, int64_t, Norm, double*, int64_t*, void*, size_t,
                                 cudaStream_t);

}  // namespace cuda
}  // namespace eae
