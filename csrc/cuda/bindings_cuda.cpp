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
#include "sets_cuda.h"

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

// ---- The estimator family on batches of sets (kernels: sets_cuda.h) ----

// Each set's constant and scale (core/kl_math.h, estimate_spec) from its sizes, as a device
// (B, 2) double tensor (only with lengths: the sizes are then on the host already).
at::Tensor set_specs(Estimator est, const at::Tensor& lx, const at::Tensor& ly, int64_t sets, int64_t mx,
                     int64_t my, int64_t d, int64_t k, Norm norm, const at::Tensor& like) {
  at::Tensor spec = at::empty({sets, 2}, at::TensorOptions().dtype(at::kDouble));
  double* v = spec.data_ptr<double>();
  for (int64_t b = 0; b < sets; ++b) {
    const int64_t m = set_rows(lx, b, mx), n = ly.defined() ? set_rows(ly, b, my) : m;
    const EstimateSpec s = estimate_spec(est, m, n, d, k, norm);
    v[2 * b] = s.constant;
    v[2 * b + 1] = s.scale;
  }
  return spec.to(like.device());
}

// Device pointer of optional lengths (contiguous int64 on the device), or null.
const int64_t* lengths_ptr(const c10::optional<at::Tensor>& lengths, at::Tensor* keep) {
  if (!lengths.has_value()) return nullptr;
  *keep = lengths->contiguous();
  return keep->data_ptr<int64_t>();
}

void check_sets_fit_int32(const at::Tensor& x) {
  TORCH_CHECK(x.size(1) < std::numeric_limits<int32_t>::max() && x.size(2) < std::numeric_limits<int32_t>::max(),
              "eae_kernels (CUDA): a set must have fewer than 2^31 - 1 rows and columns; got shape ", x.sizes());
}

// One estimator on a batch: (values (B,), grad_x, grad_y, nbr (B, M) for the entropy).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> estimate_cuda(
    Estimator est, const at::Tensor& x, const c10::optional<at::Tensor>& y,
    const c10::optional<at::Tensor>& lengths_x, const c10::optional<at::Tensor>& lengths_y, int64_t k, double p,
    double eps, bool compute_grad, int64_t row_begin = 0, int64_t row_end = -1) {
  const at::Tensor lx = check_sets(x, lengths_x, "x");
  const bool cross = y.has_value();
  at::Tensor ly;
  if (cross) {
    ly = check_sets(*y, lengths_y, "y");
    check_pair(x, *y);
    check_sets_fit_int32(*y);
  }
  check_sets_fit_int32(x);
  TORCH_CHECK(k >= 1, "eae_kernels: k must be >= 1; got ", k);
  TORCH_CHECK(eps >= 0, "eae_kernels: eps must be >= 0; got ", eps);
  const Norm norm = check_norm(p);
  const int64_t sets = x.size(0), mx = x.size(1), d = x.size(2), my = cross ? y->size(1) : mx;
  check_set_sizes(est, lx, ly, sets, mx, my, k);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xc = x.to(acc).contiguous();
  const at::Tensor yc = cross ? y->to(acc).contiguous() : at::Tensor();
  at::Tensor values = at::empty({sets}, xc.options());
  at::Tensor gx = compute_grad ? at::empty_like(xc) : at::empty({0}, x.options());
  at::Tensor gy = (compute_grad && cross) ? at::empty_like(yc) : at::empty({0}, x.options());
  at::Tensor nbr = at::empty({est == Estimator::Entropy ? sets : 0, mx}, x.options().dtype(at::kLong));
  // Ragged sets: a constant and scale per set; else one pair for all (no copy to the device).
  const bool ragged = lx.defined() || ly.defined();
  const at::Tensor spec = ragged ? set_specs(est, lx, ly, sets, mx, my, d, k, norm, xc) : at::Tensor();
  const EstimateSpec uniform = estimate_spec(est, mx, my, d, k, norm);
  at::Tensor keep_x, keep_y;
  const cuda::SetsProblem problem{sets, mx, my, d, k, norm, eps, est, false, compute_grad,
                                  lengths_ptr(lengths_x, &keep_x), cross ? lengths_ptr(lengths_y, &keep_y) : nullptr,
                                  row_begin, row_end, uniform.constant, uniform.scale};
  const at::Tensor ws = workspace(cuda::sets_workspace_bytes(problem, acc == at::kDouble, false), xc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "eae_kernels estimators (CUDA)", [&] {
    check_launch(cuda::estimate_sets<scalar_t>(
                     xc.data_ptr<scalar_t>(), cross ? yc.data_ptr<scalar_t>() : nullptr, problem,
                     ragged ? spec.data_ptr<double>() : nullptr, values.data_ptr<scalar_t>(),
                     compute_grad ? gx.data_ptr<scalar_t>() : nullptr,
                     (compute_grad && cross) ? gy.data_ptr<scalar_t>() : nullptr,
                     nbr.numel() ? nbr.data_ptr<int64_t>() : nullptr, ws.data_ptr(),
                     static_cast<size_t>(ws.numel()), stream),
                 "estimate");
  });
  if (compute_grad) {
    gx = gx.to(x.scalar_type());
    if (cross) gy = gy.to(x.scalar_type());
  }
  return {values, gx, gy, nbr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_entropy_sets_cuda(
    const at::Tensor& z, const c10::optional<at::Tensor>& lengths, int64_t k, double p, double eps,
    bool compute_grad) {
  auto [h, grad, unused, nbr] =
      estimate_cuda(Estimator::Entropy, z, c10::nullopt, lengths, c10::nullopt, k, p, eps, compute_grad);
  return {h, grad, nbr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_cross_entropy_cuda(
    const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& lengths_x,
    const c10::optional<at::Tensor>& lengths_y, int64_t k, double p, double eps, bool compute_grad) {
  auto [h, gx, gy, nbr] =
      estimate_cuda(Estimator::CrossEntropy, x, y, lengths_x, lengths_y, k, p, eps, compute_grad);
  return {h, gx, gy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_divergence_cuda(
    const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& lengths_x,
    const c10::optional<at::Tensor>& lengths_y, int64_t k, double p, double eps, bool compute_grad) {
  auto [h, gx, gy, nbr] =
      estimate_cuda(Estimator::Divergence, x, y, lengths_x, lengths_y, k, p, eps, compute_grad);
  return {h, gx, gy};
}

// x already L2-normalised (the Python op normalises); a row range gives that range's share of
// the loss of one set.
std::tuple<at::Tensor, at::Tensor> koleo_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
                                              double eps, bool compute_grad, int64_t row_begin, int64_t row_end) {
  if (!(row_begin == 0 && row_end < 0)) {
    check_sets(x, c10::nullopt, "x");
    TORCH_CHECK(x.size(0) == 1 && !lengths.has_value(),
                "eae_kernels: koleo's row range needs one set (B = 1) and no lengths");
    TORCH_CHECK(x.size(1) > 1, "eae_kernels: koleo needs at least 2 rows; got ", x.size(1));
    const cpu::RowRange rows = check_row_range(x[0], row_begin, row_end);
    row_begin = rows.begin;
    row_end = rows.end;
  }
  auto [loss, grad, unused, nbr] = estimate_cuda(Estimator::KoLeo, x, c10::nullopt, lengths, c10::nullopt, 1, 2.0,
                                                 eps, compute_grad, row_begin, row_end);
  return {loss, grad};
}

std::tuple<at::Tensor, at::Tensor> knn_sets_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& y,
                                                 const c10::optional<at::Tensor>& lengths_x,
                                                 const c10::optional<at::Tensor>& lengths_y, int64_t k, double p) {
  const at::Tensor lx = check_sets(x, lengths_x, "x");
  const bool cross = y.has_value();
  at::Tensor ly;
  if (cross) {
    ly = check_sets(*y, lengths_y, "y");
    check_pair(x, *y);
    check_sets_fit_int32(*y);
  }
  check_sets_fit_int32(x);
  TORCH_CHECK(k >= 1, "eae_kernels: k must be >= 1; got ", k);
  const Norm norm = check_norm(p);
  const int64_t sets = x.size(0), mx = x.size(1), d = x.size(2), my = cross ? y->size(1) : mx;
  for (int64_t b = 0; b < sets; ++b) {  // an empty query set needs nothing
    const int64_t m = set_rows(lx, b, mx), n = cross ? set_rows(ly, b, my) : m;
    TORCH_CHECK(m == 0 || (cross ? n >= k : n > k), "eae_kernels: set ", b, " of ", cross ? "y" : "x", " has ", n,
                " rows but k=", k, cross ? ": needs at least k rows" : ": needs more than k rows");
  }
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xc = x.to(acc).contiguous();
  const at::Tensor yc = cross ? y->to(acc).contiguous() : at::Tensor();
  at::Tensor dist = at::empty({sets, mx, k}, xc.options());
  at::Tensor idx = at::empty({sets, mx, k}, xc.options().dtype(at::kLong));
  at::Tensor keep_x, keep_y;
  const cuda::SetsProblem problem{sets, mx, my, d, k, norm, 0.0, Estimator::Entropy, cross, false,
                                  lengths_ptr(lengths_x, &keep_x), cross ? lengths_ptr(lengths_y, &keep_y) : nullptr,
                                  0, -1, 0.0, 0.0};
  const at::Tensor ws = workspace(cuda::sets_workspace_bytes(problem, acc == at::kDouble, true), xc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "eae_kernels::knn_sets (CUDA)", [&] {
    check_launch(cuda::knn_sets<scalar_t>(xc.data_ptr<scalar_t>(), cross ? yc.data_ptr<scalar_t>() : nullptr,
                                          problem, dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                          ws.data_ptr(), static_cast<size_t>(ws.numel()), stream),
                 "knn_sets");
  });
  return {dist, idx};
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY_IMPL(eae_kernels, CUDA, m) {
  m.impl("kl_entropy", &eae::kl_entropy_cuda);
  m.impl("knn", &eae::knn_cuda);
  m.impl("kl_entropy_sets", &eae::kl_entropy_sets_cuda);
  m.impl("knn_sets", &eae::knn_sets_cuda);
  m.impl("kl_cross_entropy", &eae::kl_cross_entropy_cuda);
  m.impl("kl_divergence", &eae::kl_divergence_cuda);
  m.impl("koleo", &eae::koleo_cuda);
}
