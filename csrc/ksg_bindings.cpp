// PyTorch binding of the KSG mutual-information estimator (cpu/ksg_cpu.h): the op schemas, added
// to the eae_kernels library as a fragment, and their CPU implementations. The Python wrapper
// eae_kernels/ksg.py checks arguments first and gives friendlier messages; the checks here guard
// direct callers of torch.ops.eae_kernels.*.
//
// Ops (no autograd: the estimate is piecewise constant in the inputs):
//   ksg_mutual_information(x, y, k, variant, lengths=None, path=0) -> mi
//       x (N, dx), y (N, dy) -> 0-dim; x (B, N, dx), y (B, N, dy) -> (B,), with optional ragged
//       lengths (B,) int64: set b is its first lengths[b] rows. Nats; float32 for half inputs,
//       else the input dtype; NaN for a set holding a NaN or inf.
//   ksg_range_count(z, radius, inclusive, path=0) -> counts
//       z (N, d), radius (N,): counts[i] = #{j != i : max_c |z_ic - z_jc| < radius[i]} (<= when
//       inclusive), (N,) int64; z and radius must be finite. Pass 2 of the estimator, exposed for the GPU backends' composition
//       and for tests.
//   path: 0 picks the faster CPU path for the shape, 1 forces the tiled one, 2 the sweep (see
//       cpu/ksg_cpu.h); the results are identical (the tests check it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/ksg_cpu.h"

namespace eae {
namespace {

void torch_parallel_for(int64_t n, int64_t grain, const cpu::RangeFn& body) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(begin, end); });
}

at::ScalarType ksg_compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

cpu::KsgPath check_path(int64_t path) {
  TORCH_CHECK(0 <= path && path <= 2, "eae_kernels: path must be 0 (auto), 1 (tiled) or 2 (sweep); got ", path);
  return static_cast<cpu::KsgPath>(path);
}

at::Tensor ksg_mutual_information_cpu(const at::Tensor& x, const at::Tensor& y, int64_t k,
                                      int64_t variant, const c10::optional<at::Tensor>& lengths,
                                      int64_t path) {
  const cpu::KsgPath how = check_path(path);
  TORCH_CHECK(x.dim() == y.dim() && (x.dim() == 2 || x.dim() == 3),
              "eae_kernels.ksg_mutual_information: x and y must both be 2-D (N, d) or both 3-D "
              "(B, N, d); got ", x.dim(), "-D and ", y.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && x.scalar_type() == y.scalar_type(),
              "eae_kernels.ksg_mutual_information: x and y must have the same floating dtype; got ",
              x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(variant == 1 || variant == 2,
              "eae_kernels.ksg_mutual_information: variant must be 1 or 2; got ", variant);
  TORCH_CHECK(k >= 1, "eae_kernels.ksg_mutual_information: k must be >= 1; got ", k);
  const bool batched = x.dim() == 3;
  const at::Tensor xb = batched ? x : x.unsqueeze(0);
  const at::Tensor yb = batched ? y : y.unsqueeze(0);
  const int64_t b = xb.size(0), n = xb.size(1), dx = xb.size(2), dy = yb.size(2);
  TORCH_CHECK(yb.size(0) == b && yb.size(1) == n,
              "eae_kernels.ksg_mutual_information: x and y must have the same leading shape; got ",
              x.sizes(), " and ", y.sizes());
  TORCH_CHECK(dx >= 1 && dy >= 1, "eae_kernels.ksg_mutual_information: x and y need >= 1 column");

  std::vector<int64_t> rows(static_cast<size_t>(b), n);
  if (lengths.has_value()) {
    TORCH_CHECK(batched, "eae_kernels.ksg_mutual_information: lengths needs batched 3-D x and y");
    const at::Tensor& len = *lengths;
    TORCH_CHECK(len.dim() == 1 && len.size(0) == b && len.scalar_type() == at::kLong,
                "eae_kernels.ksg_mutual_information: lengths must be an int64 tensor of shape (",
                b, ",); got ", len.scalar_type(), " of shape ", len.sizes());
    const at::Tensor len_cpu = len.to(at::kCPU).contiguous();
    for (int64_t s = 0; s < b; ++s) rows[s] = len_cpu.data_ptr<int64_t>()[s];
  }
  for (int64_t s = 0; s < b; ++s)
    TORCH_CHECK(k < rows[s] && rows[s] <= n, "eae_kernels.ksg_mutual_information: set ", s,
                " has ", rows[s], " rows; need k < rows <= N with k=", k, ", N=", n);

  const at::ScalarType compute = ksg_compute_type(x.scalar_type());
  const at::Tensor xc = xb.to(compute).contiguous();
  const at::Tensor yc = yb.to(compute).contiguous();
  std::vector<double> mi(static_cast<size_t>(b));
  AT_DISPATCH_FLOATING_TYPES(compute, "eae_kernels::ksg_mutual_information (CPU)", [&] {
    // One set after the other, each threaded over its rows (sharing the sets out whole between
    // the threads measured no faster for B = 32 sets of N = 2,000). A batched search (pass 1 of
    // all sets in one call) would replace the knn_search call inside cpu::ksg_mutual_information.
    for (int64_t s = 0; s < b; ++s)
      mi[s] = cpu::ksg_mutual_information<scalar_t>(
          xc.data_ptr<scalar_t>() + s * n * dx, yc.data_ptr<scalar_t>() + s * n * dy, rows[s], dx,
          dy, k, static_cast<int>(variant), nullptr, nullptr, torch_parallel_for, how);
  });
  at::Tensor out = at::tensor(mi, at::TensorOptions().dtype(at::kDouble)).to(compute);
  return batched ? out : out.squeeze(0);
}

at::Tensor ksg_range_count_cpu(const at::Tensor& z, const at::Tensor& radius, bool inclusive,
                               int64_t path) {
  const cpu::KsgPath how = check_path(path);
  TORCH_CHECK(z.dim() == 2 && z.size(1) >= 1 && at::isFloatingType(z.scalar_type()),
              "eae_kernels.ksg_range_count: z must be a 2-D (N, d) floating tensor with d >= 1; got ",
              z.scalar_type(), " of shape ", z.sizes());
  TORCH_CHECK(radius.dim() == 1 && radius.size(0) == z.size(0),
              "eae_kernels.ksg_range_count: radius must have shape (", z.size(0), ",); got ",
              radius.sizes());
  TORCH_CHECK(at::isfinite(z).all().item<bool>() && at::isfinite(radius).all().item<bool>(),
              "eae_kernels.ksg_range_count: z and radius must be finite");
  const at::ScalarType compute = ksg_compute_type(z.scalar_type());
  const at::Tensor zc = z.to(compute).contiguous();
  const at::Tensor rc = radius.to(compute).contiguous();
  const int64_t n = zc.size(0), d = zc.size(1);
  at::Tensor counts = at::empty({n}, zc.options().dtype(at::kLong));
  if (n == 0) return counts;
  AT_DISPATCH_FLOATING_TYPES(compute, "eae_kernels::ksg_range_count (CPU)", [&] {
    cpu::range_count_linf<scalar_t>(zc.data_ptr<scalar_t>(), n, d, rc.data_ptr<scalar_t>(),
                                    inclusive, counts.data_ptr<int64_t>(), torch_parallel_for, how);
  });
  return counts;
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY_FRAGMENT(eae_kernels, m) {
  m.def("ksg_mutual_information(Tensor x, Tensor y, int k, int variant, Tensor? lengths=None,"
        " int path=0) -> Tensor");
  m.def("ksg_range_count(Tensor z, Tensor radius, bool inclusive, int path=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(eae_kernels, CPU, m) {
  m.impl("ksg_mutual_information", &eae::ksg_mutual_information_cpu);
  m.impl("ksg_range_count", &eae::ksg_range_count_cpu);
}
