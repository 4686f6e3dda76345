// PyTorch binding: the op schemas (TORCH_LIBRARY) and the CPU implementations. The CUDA
// implementations register themselves for the CUDA dispatch key in cuda/bindings_cuda.cpp.
// Argument checks here guard direct callers of torch.ops.eae_kernels.*; the Python wrappers in
// eae_kernels/ops.py check first and give friendlier messages.
//
// Ops:
//   kl_entropy(z, k, p, eps, compute_grad, deterministic, row_begin, row_end) -> (h, dh/dz, nbr)
//       h = [row_begin == 0 < row_end] (psi(N) - psi(k) + log V) + (d/N) sum_{row_begin <= i < row_end} term_i,
//       so h = H for all rows (row_end = -1 means N), and the h of a partition of the rows sum to
//       H (used by the distributed mode). h: 0-dim, float32 for half inputs else z's dtype.
//       dh/dz: (N, d) in z's dtype and nbr: (row_end - row_begin,) int64 index of each range
//       row's k-th neighbour, when compute_grad; else both are empty (0,) tensors. The autograd
//       formula (grad_h * dh/dz, plus the Hessian-vector product for double backward, which
//       needs nbr) is registered in C++, in autograd.cpp (the Autograd dispatch key).
//   knn(z, k, p) -> (dist, idx)
//       dist: (N, k) ascending distances (float32 for half inputs), idx: (N, k) int64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "bindings.h"
#include "cpu/kl_cpu.h"
#include "cpu/search_mixed.h"

namespace eae {

cpu::RowRange check_row_range(const at::Tensor& z, int64_t row_begin, int64_t row_end) {
  const int64_t n = z.size(0);
  if (row_end < 0) row_end = n;
  TORCH_CHECK(0 <= row_begin && row_begin <= row_end && row_end <= n,
              "eae_kernels: need 0 <= row_begin <= row_end <= N; got row_begin=", row_begin,
              ", row_end=", row_end, ", N=", n);
  return {row_begin, row_end};
}

Norm check_args(const at::Tensor& z, int64_t k, double p) {
  TORCH_CHECK(z.dim() == 2, "eae_kernels: z must be 2-D (N, d); got ", z.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(z.scalar_type()),
              "eae_kernels: z must be float16, bfloat16, float32 or float64; got ", z.scalar_type());
  TORCH_CHECK(k >= 1, "eae_kernels: k must be >= 1; got ", k);
  TORCH_CHECK(z.size(1) >= 1, "eae_kernels: z must have d >= 1 columns");
  TORCH_CHECK(z.size(0) > k, "eae_kernels: z needs N > k rows; got N=", z.size(0), ", k=", k);
  Norm norm;
  TORCH_CHECK(norm_from_p(p, &norm), "eae_kernels: p must be 1, 2 or inf; got ", p);
  return norm;
}

at::ScalarType accumulation_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

namespace {

void torch_parallel_for(int64_t n, int64_t grain, const cpu::RangeFn& body) {
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(begin, end); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_entropy_cpu(
    const at::Tensor& z, int64_t k, double p, double eps, bool compute_grad,
    bool /*deterministic: the CPU path always is*/, int64_t row_begin, int64_t row_end) {
  const Norm norm = check_args(z, k, p);
  const cpu::RowRange rows = check_row_range(z, row_begin, row_end);
  TORCH_CHECK(eps >= 0, "eae_kernels: eps must be >= 0; got ", eps);
  const at::Tensor zc = z.to(accumulation_type(z.scalar_type())).contiguous();
  const int64_t n = zc.size(0), d = zc.size(1);
  at::Tensor grad = compute_grad ? at::empty_like(zc) : at::empty({0}, z.options());
  at::Tensor nbr = at::empty({compute_grad ? rows.end - rows.begin : 0}, z.options().dtype(at::kLong));
  double h = 0;
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "eae_kernels::kl_entropy (CPU)", [&] {
    h = cpu::kl_entropy<scalar_t>(zc.data_ptr<scalar_t>(), n, d, k, norm, eps, rows,
                                  compute_grad ? grad.data_ptr<scalar_t>() : nullptr,
                                  compute_grad ? nbr.data_ptr<int64_t>() : nullptr,
                                  torch_parallel_for);
  });
  if (compute_grad) grad = grad.to(z.scalar_type());
  return {at::scalar_tensor(h, zc.options()), grad, nbr};
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& z, int64_t k, double p) {
  const Norm norm = check_args(z, k, p);
  const at::Tensor zc = z.to(accumulation_type(z.scalar_type())).contiguous();
  const int64_t n = zc.size(0), d = zc.size(1);
  at::Tensor dist = at::empty({n, k}, zc.options());
  at::Tensor idx = at::empty({n, k}, zc.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "eae_kernels::knn (CPU)", [&] {
    cpu::knn_search<scalar_t>(zc.data_ptr<scalar_t>(), n, d, k, norm, {0, n}, dist.data_ptr<scalar_t>(),
                              idx.data_ptr<int64_t>(), torch_parallel_for);
  });
  if (norm == Norm::L2) dist.sqrt_();  // the search keeps squared distances
  return {dist, idx};
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY(eae_kernels, m) {
  m.def("kl_entropy(Tensor z, int k, float p, float eps, bool compute_grad, bool deterministic,"
        " int row_begin=0, int row_end=-1) -> (Tensor, Tensor, Tensor)");
  m.def("knn(Tensor z, int k, float p) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(eae_kernels, CPU, m) {
  m.impl("kl_entropy", &eae::kl_entropy_cpu);
  m.impl("knn", &eae::knn_cpu);
}

// Python module eae_kernels._C: importing it registers the ops above. It also exposes the CPU
// instruction-set switch (for tests and benchmarks) and whether CUDA kernels were compiled in.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", [] { return std::string(eae::cpu::isa()); },
        "Instruction set of the CPU search kernel: 'avx512', 'avx2' or 'generic'.");
  m.def("set_cpu_isa", [](const std::string& name) {
    TORCH_CHECK(eae::cpu::set_isa(name.c_str()), "eae_kernels: CPU instruction set '", name,
                "' is unknown or not supported by this CPU (known: avx512, avx2, generic)");
  }, "Force the CPU search kernel's instruction set.");
  m.def("cpu_isa_supported", [](const std::string& name) { return eae::cpu::isa_supported(name.c_str()); });
  m.def("cpu_mixed_search_supported", [] { return eae::cpu::mixed_search_supported(); },
        "Whether this CPU can run the certified integer neighbour search (EAE_KERNELS_SEARCH).");
  m.def("cpu_mixed_search_stats", [] {
    const eae::cpu::MixedStats s = eae::cpu::mixed_search_stats();
    return std::make_tuple(s.calls, s.mixed_blocks, s.exact_blocks);
  }, "(calls, row blocks by the integer pass, row blocks by the exact fallback) since start-up.");
  m.attr("with_cuda") = EAE_WITH_CUDA != 0;
}
