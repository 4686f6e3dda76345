// Host side: how a call runs (searcher, gradient path, list capacity) and where everything lives
// in the caller's workspace. Read on every call, so tests can switch the knobs below.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "host_util.h"
#include "kernel_params.cuh"
#include "kl_cuda.h"
#include "search_list.cuh"
#include "topk.cuh"

namespace eae {
namespace cuda {
namespace detail {

enum class Searcher : int { kSmall, kLarge, kList };

template <class T>
int tile_rows(Searcher s, int capacity) {
  switch (s) {
    case Searcher::kLarge:
      return capacity == 1 ? LargeTile<T, 1>::type::BM : capacity == 4 ? LargeTile<T, 4>::type::BM : LargeTile<T, 16>::type::BM;
    case Searcher::kSmall: return SmallTile<T, 1>::type::BM;
    case Searcher::kList: default: return ListSearch<T>::ROWS;
  }
}

inline int rows_per_block(Searcher s, int capacity, bool is_double) {
  return is_double ? tile_rows<double>(s, capacity) : tile_rows<float>(s, capacity);
}

inline int multiprocessor_count() {
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

inline Searcher choose_searcher(int64_t m, int64_t k, bool is_double, bool fused) {
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

inline int bit_width(int64_t x) {
  int b = 0;
  while (x > 0) {
    ++b;
    x >>= 1;
  }
  return b;
}

inline size_t radix_sort_temp_bytes(int m, int end_bit) {
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

inline Path choose_path(const EntropyProblem& pr) {
  if (!pr.compute_grad) return Path::kForward;
  const bool fits_fused = pr.n <= kFusedMaxRows && pr.d <= kFusedMaxDim;
  if (env_is("EAE_KERNELS_CUDA_PATH", "gather")) return Path::kReverseGather;
  if (env_is("EAE_KERNELS_CUDA_PATH", "atomic") && !pr.deterministic) return Path::kAtomic;
  if (fits_fused) return Path::kFused;
  return pr.deterministic ? Path::kReverseGather : Path::kAtomic;
}

inline Plan plan_entropy(const EntropyProblem& pr, bool is_double) {
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

inline Plan plan_knn(int64_t n, int64_t k, bool is_double) {
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

}  // namespace detail
}  // namespace cuda
}  // namespace eae
