// The CUDA implementations of the eae_kernels ops (schemas and semantics in ../bindings.cpp),
// registered for the CUDA dispatch key. Deliberately thin: the same argument checks as the CPU
// ops, outputs and workspace allocated through PyTorch's caching allocator (so CUDA-graph
// capture works), the current stream, and one call into the torch-free kernels (kl_cuda.h).
// Half inputs are computed in float32, like on the CPU: the result is float32, the gradient has
// the input's dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../bindings.h"
#include "../cpu/kl_cpu.h"
#include "kl_cuda.h"

namespace eae {
namespace {

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "eae_kernels::", op, " (CUDA): ", cudaGetErrorString(err));
}

// The kernels index rows with 32-bit integers.
void check_fits_int32(const at::Tensor& z) {
  TORCH_CHECK(z.size(0) < std::numeric_limits<int32_t>::max() && z.size(1) < std::numeric_limits<int32_t>::max(),
              "eae_kernels (CUDA): z must have fewer than 2^31 - 1 rows and columns; got shape ", z.sizes());
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_entropy_cuda(const at::Tensor& z, int64_t k, double p,
                                                               double eps, bool compute_grad, bool deterministic,
                                                               int64_t row_begin, int64_t row_end) {
  const Norm norm = check_args(z, k, p);
  const cpu::RowRange rows = check_row_range(z, row_begin, row_end);
  TORCH_CHECK(eps >= 0, "eae_kernels: eps must be >= 0; got ", eps);
  check_fits_int32(z);
  const c10::cuda::CUDAGuard device_guard(z.device());
  const at::Tensor zc = z.to(accumulation_type(z.scalar_type())).contiguous();
  const int64_t n = zc.size(0), d = zc.size(1);
  at::Tensor h = at::empty({}, zc.options());
  at::Tensor grad = compute_grad ? at::empty_like(zc) : at::empty({0}, z.options());
  at::Tensor nbr = at::empty({compute_grad ? rows.end - rows.begin : 0}, z.options().dtype(at::kLong));
  const cuda::EntropyProblem problem{n, d, k, norm, eps, rows.begin, rows.end, compute_grad, deterministic};
  const at::Tensor ws =
      workspace(cuda::entropy_workspace_bytes(problem, zc.scalar_type() == at::kDouble), zc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "eae_kernels::kl_entropy (CUDA)", [&] {
    check_launch(cuda::kl_entropy<scalar_t>(zc.data_ptr<scalar_t>(), problem, h.data_ptr<scalar_t>(),
                                            compute_grad ? grad.data_ptr<scalar_t>() : nullptr,
                                            compute_grad ? nbr.data_ptr<int64_t>() : nullptr, ws.data_ptr(),
                                            static_cast<size_t>(ws.numel()), stream),
                 "kl_entropy");
  });
  if (compute_grad) grad = grad.to(z.scalar_type());
  return {h, grad, nbr};
}

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& z, int64_t k, double p) {
  const Norm norm = check_args(z, k, p);
  check_fits_int32(z);
  const c10::cuda::CUDAGuard device_guard(z.device());
  const at::Tensor zc = z.to(accumulation_type(z.scalar_type())).contiguous();
  const int64_t n = zc.size(0), d = zc.size(1);
  at::Tensor dist = at::empty({n, k}, zc.options());
  at::Tensor idx = at::empty({n, k}, zc.options().dtype(at::kLong));
  const at::Tensor ws = workspace(cuda::knn_workspace_bytes(n, d, k, zc.scalar_type() == at::kDouble), zc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "eae_kernels::knn (CUDA)", [&] {
    check_launch(cuda::knn<scalar_t>(zc.data_ptr<scalar_t>(), n, d, k, norm, dist.data_ptr<scalar_t>(),
                                     idx.data_ptr<int64_t>(), ws.data_ptr(), static_cast<size_t>(ws.numel()),
                                     stream),
                 "knn");
  });
  return {dist, idx};
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY_IMPL(eae_kernels, CUDA, m) {
  m.impl("kl_entropy", &eae::kl_entropy_cuda);
  m.impl("knn", &eae::knn_cuda);
}
