// The search kernel: one template for every searcher and norm. In the fused path the blocks
// take tickets; the first S search, the rest compute the gradient (gradient.cuh).
#pragma once

#include "gradient.cuh"
#include "kernel_params.cuh"

namespace eae {
namespace cuda {
namespace detail {

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

}  // namespace detail
}  // namespace cuda
}  // namespace eae
