// Torch-free CUDA kernels for the k-nearest-neighbour search and the fused Kozachenko–Leonenko
// entropy (value and gradient), with exactly the semantics of the CPU kernels (cpu/kl_cpu.h):
// the same keys, the same lower-index tie-break, the same row ranges and non-finite handling.
//
// Raw device pointers in and out, float or double, rows contiguous; every launch goes to the
// given stream, nothing synchronises with the host and nothing is allocated: the caller passes a
// workspace of workspace_bytes() bytes (the PyTorch binding, cuda/bindings_cuda.cpp, allocates
// it through the caching allocator), so the calls can be captured in a CUDA graph.
//
// Memory: O(N*d + N*k). Nothing of size N x N is ever allocated.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "../core/kl_math.h"

namespace eae {
namespace cuda {

// What one kl_entropy call computes: the terms of rows [row_begin, row_end) of z (n, d),
//
//   h = [row_begin == 0 < row_end] (psi(n) - psi(k) + log V) + (d / n) sum_{row_begin <= i < row_end} term_i
//
// and, when `grad` is not null, dh/dz for all n rows, and each range row's k-th neighbour.
struct EntropyProblem {
  int64_t n, d, k;
  Norm norm;
  double eps;
  int64_t row_begin, row_end;  // 0 <= row_begin <= row_end <= n
  bool compute_grad;
  bool deterministic;  // no float atomics: the gradient is bit-identical from run to run
};

// How a call runs (chosen from the problem and the device; see kl_cuda.cu). Exposed for the
// binding's workspace allocation and for tests and benchmarks.
enum class Path : int {
  kFused = 0,          // small batch: ONE kernel computes h and the whole gradient (+ an 8-byte memset)
  kAtomic = 1,         // search kernel whose epilogue scatters the gradient with float atomics
  kReverseGather = 2,  // search kernel, stable sort of the neighbours, gather kernel (deterministic)
  kForward = 3,        // h only (no gradient)
};

// The path kl_entropy() takes for this problem on the current device.
Path entropy_path(const EntropyProblem& problem);

// Bytes of device workspace kl_entropy() / knn() need (possibly 0). Depends on the current
// device (its number of multiprocessors chooses the tile size).
size_t entropy_workspace_bytes(const EntropyProblem& problem, bool is_double);
size_t knn_workspace_bytes(int64_t n, int64_t d, int64_t k, bool is_double);

// The entropy estimate and (when grad is not null) its gradient.
//   z:    (n, d) row-major, contiguous, on the current device; n > k >= 1, d >= 1, n < 2^31.
//   h:    0-dim output (one element of T).
//   grad: (n, d) output, dh/dz; or null for the value only (problem.compute_grad must match).
//   nbr:  (row_end - row_begin,) int64 output, the k-th neighbour of each range row; or null.
//   workspace: entropy_workspace_bytes() bytes, 256-byte aligned.
// Returns the first launch error (cudaSuccess when all launches were queued).
template <class T>
cudaError_t kl_entropy(const T* z, const EntropyProblem& problem, T* h, T* grad, int64_t* nbr,
                       void* workspace, size_t workspace_bytes, cudaStream_t stream);

// The k nearest other rows of every row of z (n, d).
//   dist: (n, k) output, ascending distances (not squared); NaN for a row holding NaN or inf
//         and for a neighbour holding NaN or inf.
//   idx:  (n, k) int64 output, row indices, ties broken by the lower index; always in [0, n).
template <class T>
cudaError_t knn(const T* z, int64_t n, int64_t d, int64_t k, Norm norm, T* dist, int64_t* idx,
                void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace eae
