// CUDA kernels for the k-nearest-neighbour search and the fused Kozachenko–Leonenko entropy:
// the launches and the public entry points. The pieces, split as flash-attention splits its
// kernels:
//
//   ptx.cuh            PTX wrappers (cp.async, ld.acquire, 16-byte vectors)
//   kernel_params.cuh  launch shape, path limits, Params (one struct for every kernel)
//   topk.cuh           distance keys, register top-k lists and their merge, tile geometry
//   row_epilogue.cuh   a finished row: NaN rule, knn outputs, entropy term, atomic scatter
//   search_tile.cuh    searcher 1: register tiles through shared memory (k <= 16)
//   search_list.cuh    searcher 2: one warp per row, the list in global memory (k > 16)
//   gradient.cuh       per-row gradient, h, the fused gradient blocks, the gather kernel
//   search_kernel.cuh  the search kernel (fused path: tickets choose search or gradient role)
//   plan.cuh           host: searcher, path, workspace layout
//   host_util.h        host: tuning knobs, list capacity, workspace alignment
//   static_switch.h    NORM_SWITCH / CAPACITY_SWITCH / BOOL_SWITCH: run-time value -> template
//                      argument
//
// The estimator family on batches of sets (sets_cuda.cu) reuses the PTX wrappers, the top-k
// lists, the NaN rule and the per-row gradient.
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

#include <cstring>

#include "gradient.cuh"
#include "kernel_params.cuh"
#include "plan.cuh"
#include "search_kernel.cuh"
#include "search_list.cuh"
#include "search_tile.cuh"
#include "static_switch.h"
#include "topk.cuh"

namespace eae {
namespace cuda {
namespace {

using namespace detail;

template <class T, Norm N, class Search>
void launch_search(const Params<T>& p, int grid, cudaStream_t stream) {
  search_kernel<T, Search, N><<<grid, kThreads, 0, stream>>>(p);
}

// The search kernel of the plan's searcher and list capacity, for the norm.
template <class T>
void launch_search_any(Norm norm, const Plan& plan, const Params<T>& p, int grid, cudaStream_t stream) {
  NORM_SWITCH(norm, N, [&] {
    if (plan.searcher == Searcher::kList) return launch_search<T, N, ListSearch<T>>(p, grid, stream);
    CAPACITY_SWITCH(plan.capacity, K, [&] {
      if (plan.searcher == Searcher::kLarge)
        launch_search<T, N, TileSearch<typename LargeTile<T, K>::type>>(p, grid, stream);
      else
        launch_search<T, N, TileSearch<typename SmallTile<T, K>::type>>(p, grid, stream);
    });
  });
}

template <class T>
void launch_gather(Norm norm, const Params<T>& p, const int* sorted_nbr, const int* sorted_rows,
                   cudaStream_t stream) {
  const int grid = static_cast<int>((p.n + kWarps - 1) / kWarps);
  NORM_SWITCH(norm, N, [&] { gather_gradient_kernel<T, N><<<grid, kThreads, 0, stream>>>(p, sorted_nbr, sorted_rows); });
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
