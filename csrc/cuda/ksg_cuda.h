// Torch-free CUDA kernel of the KSG estimator's pass 2 (see cpu/ksg_cpu.h): the max-norm range
// count, with exactly the CPU kernel's semantics and arithmetic (max_c fl(|a_c - b_c|), strict or
// non-strict comparison with the row's radius, the row itself excluded), so the counts are
// identical. Raw device pointers, float or double, rows contiguous; one launch on the given
// stream, no allocation, no host synchronisation. Memory: the (n,) output only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace eae {
namespace cuda {

// counts[i] = #{j != i, j < n : max_c |z[i][c] - z[j][c]| < radius[i]}   (<= when inclusive)
// z: (n, d) row-major, finite; radius: (n,) finite; counts: (n,) int64. n < 2^31.
template <class T>
cudaError_t range_count_linf(const T* z, int64_t n, int64_t d, const T* radius, bool inclusive,
                             int64_t* counts, cudaStream_t stream);

}  // namespace cuda
}  // namespace eae
