// The CUDA implementation of eae_kernels::ksg_range_count (schema and semantics in
// ../ksg_bindings.cpp), registered for the CUDA dispatch key: the same checks as the CPU op, the
// output through PyTorch's caching allocator, the current stream, one call into ksg_cuda.h. The
// `path` argument selects between CPU paths and is ignored here (one GPU kernel).
// ksg_mutual_information itself composes the CUDA k-NN op with this one in eae_kernels/ksg.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "ksg_cuda.h"

namespace eae {
namespace {

at::Tensor ksg_range_count_cuda(const at::Tensor& z, const at::Tensor& radius, bool inclusive, int64_t path) {
  TORCH_CHECK(0 <= path && path <= 2, "eae_kernels: path must be 0, 1 or 2; got ", path);
  TORCH_CHECK(z.dim() == 2 && z.size(1) >= 1 && at::isFloatingType(z.scalar_type()),
              "eae_kernels.ksg_range_count: z must be a 2-D (N, d) floating tensor with d >= 1; got ",
              z.scalar_type(), " of shape ", z.sizes());
  TORCH_CHECK(radius.dim() == 1 && radius.size(0) == z.size(0),
              "eae_kernels.ksg_range_count: radius must have shape (", z.size(0), ",); got ", radius.sizes());
  TORCH_CHECK(radius.device() == z.device(), "eae_kernels.ksg_range_count: radius must be on z's device");
  TORCH_CHECK(z.size(0) < std::numeric_limits<int32_t>::max() && z.size(1) < std::numeric_limits<int32_t>::max(),
              "eae_kernels.ksg_range_count (CUDA): z must have fewer than 2^31 - 1 rows and columns");
  TORCH_CHECK(at::isfinite(z).all().item<bool>() && at::isfinite(radius).all().item<bool>(),
              "eae_kernels.ksg_range_count: z and radius must be finite");
  const c10::cuda::CUDAGuard device_guard(z.device());
  const at::ScalarType compute =
      (z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16) ? at::kFloat : z.scalar_type();
  const at::Tensor zc = z.to(compute).contiguous();
  const at::Tensor rc = radius.to(compute).contiguous();
  at::Tensor counts = at::empty({zc.size(0)}, zc.options().dtype(at::kLong));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(compute, "eae_kernels::ksg_range_count (CUDA)", [&] {
    const cudaError_t err = cuda::range_count_linf<scalar_t>(zc.data_ptr<scalar_t>(), zc.size(0), zc.size(1),
                                                             rc.data_ptr<scalar_t>(), inclusive,
                                                             counts.data_ptr<int64_t>(), stream);
    TORCH_CHECK(err == cudaSuccess, "eae_kernels::ksg_range_count (CUDA): ", cudaGetErrorString(err));
  });
  return counts;
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY_IMPL(eae_kernels, CUDA, m) { m.impl("ksg_range_count", &eae::ksg_range_count_cuda); }
