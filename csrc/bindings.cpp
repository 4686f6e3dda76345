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
//
// The estimator family, on a batch of B sets stored padded (B, M, d) with optional lengths (B,)
// int64 (rows at or past lengths[b] are ignored and get a zero gradient; None: all rows). Values
// (B,) are float32 for half inputs, else the input dtype; gradients have the input's dtype (and
// shape); nbr is each query row's k-th neighbour in its own set (-1 for padded rows). The
// constants follow core/kl_math.h (estimate_spec).
//   kl_entropy_sets(z, lengths, k, p, eps, compute_grad) -> (h (B,), dh/dz, nbr (B, M))
//   kl_cross_entropy(x, y, lengths_x, lengths_y, k, p, eps, compute_grad) -> (h (B,), dh/dx, dh/dy)
//   kl_divergence(x, y, lengths_x, lengths_y, k, p, eps, compute_grad) -> (D (B,), dD/dx, dD/dy)
//   koleo(x, lengths, eps, compute_grad, row_begin, row_end) -> (loss (B,), dloss/dx)
//       x already L2-normalised (the Python op normalises, with autograd); loss = -mean log(r + eps).
//       A row range (B = 1, no lengths) gives that range's share: -(1/M) sum_{i in range} log(r_i + eps).
//   knn_sets(x, y, lengths_x, lengths_y, k, p) -> (dist (B, M, k), idx (B, M, k))
//       y None: the self case. Padded query rows: distance 0, index -1.
// When compute_grad is false the gradient outputs are empty (0,) tensors.
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

// ---- The estimator family on batches of sets ----

// The argument checks of the set ops (declared in bindings.h; the CUDA binding shares them).

// A batch (B, M, d) of sets: checks the tensor and its lengths; returns the lengths as a CPU
// int64 tensor (undefined when absent).
at::Tensor check_sets(const at::Tensor& x, const c10::optional<at::Tensor>& lengths, const char* name) {
  TORCH_CHECK(x.dim() == 3, "eae_kernels: ", name, " must be 3-D (B, M, d); got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "eae_kernels: ", name, " must be float16, bfloat16, float32 or float64; got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 1, "eae_kernels: ", name, " must have d >= 1 columns");
  if (!lengths.has_value()) return at::Tensor();
  const at::Tensor& len = *lengths;
  TORCH_CHECK(len.dim() == 1 && len.size(0) == x.size(0), "eae_kernels: lengths of ", name,
              " must have shape (B,) = (", x.size(0), ",); got ", len.sizes());
  TORCH_CHECK(len.scalar_type() == at::kLong, "eae_kernels: lengths of ", name, " must be int64; got ",
              len.scalar_type());
  TORCH_CHECK(len.device() == x.device(), "eae_kernels: lengths of ", name, " must be on ", x.device(),
              "; got ", len.device());
  at::Tensor out = len.to(at::kCPU).contiguous();
  const int64_t* v = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < out.size(0); ++b)
    TORCH_CHECK(0 <= v[b] && v[b] <= x.size(1), "eae_kernels: lengths of ", name, "[", b, "] = ", v[b],
                " is outside [0, ", x.size(1), "]");
  return out;
}

int64_t set_rows(const at::Tensor& lengths, int64_t b, int64_t full) {
  return lengths.defined() ? lengths.data_ptr<int64_t>()[b] : full;
}

Norm check_norm(double p) {
  Norm norm;
  TORCH_CHECK(norm_from_p(p, &norm), "eae_kernels: p must be 1, 2 or inf; got ", p);
  return norm;
}

// y's shape and type agree with x's (a separate reference set).
void check_pair(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(y.size(0) == x.size(0), "eae_kernels: x and y must have the same number of sets B; got ",
              x.size(0), " and ", y.size(0));
  TORCH_CHECK(y.size(2) == x.size(2), "eae_kernels: x and y must have the same number of columns d; got ",
              x.size(2), " and ", y.size(2));
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), "eae_kernels: x and y must have the same dtype; got ",
              x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(y.device() == x.device(), "eae_kernels: x and y must be on the same device; got ",
              x.device(), " and ", y.device());
}

// Every set's sizes are valid: the self search needs more than k rows, the cross search at least
// k reference rows and one query row.
void check_set_sizes(Estimator est, const at::Tensor& lx, const at::Tensor& ly, int64_t sets,
                     int64_t mx, int64_t my, int64_t k) {
  for (int64_t b = 0; b < sets; ++b) {
    const int64_t m = set_rows(lx, b, mx), n = set_rows(ly, b, my);
    if (est == Estimator::CrossEntropy) {
      TORCH_CHECK(m >= 1, "eae_kernels: set ", b, " of x is empty; the estimate needs a query row");
    } else {
      TORCH_CHECK(m > k, "eae_kernels: set ", b, " of x has ", m, " rows but k=", k,
                  ": the k-th nearest other row needs more than k rows");
    }
    if (est == Estimator::CrossEntropy || est == Estimator::Divergence)
      TORCH_CHECK(n >= k, "eae_kernels: set ", b, " of y has ", n, " rows but k=", k,
                  ": the k-th nearest row of y needs at least k rows");
  }
}

namespace {

// One estimator on a batch: (values (B,), grad_x, grad_y, nbr (B, M)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> estimate_cpu(
    Estimator est, const at::Tensor& x, const c10::optional<at::Tensor>& y,
    const c10::optional<at::Tensor>& lengths_x, const c10::optional<at::Tensor>& lengths_y,
    int64_t k, double p, double eps, bool compute_grad) {
  const at::Tensor lx = check_sets(x, lengths_x, "x");
  const bool cross = y.has_value();
  at::Tensor ly;
  if (cross) {
    ly = check_sets(*y, lengths_y, "y");
    check_pair(x, *y);
  }
  TORCH_CHECK(k >= 1, "eae_kernels: k must be >= 1; got ", k);
  TORCH_CHECK(eps >= 0, "eae_kernels: eps must be >= 0; got ", eps);
  const Norm norm = check_norm(p);
  const int64_t sets = x.size(0), mx = x.size(1), d = x.size(2), my = cross ? y->size(1) : mx;
  check_set_sizes(est, lx, ly, sets, mx, my, k);
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xc = x.to(acc).contiguous();
  const at::Tensor yc = cross ? y->to(acc).contiguous() : at::Tensor();
  at::Tensor values = at::empty({sets}, xc.options().dtype(at::kDouble));
  at::Tensor gx = compute_grad ? at::empty_like(xc) : at::empty({0}, x.options());
  at::Tensor gy = (compute_grad && cross) ? at::empty_like(yc) : at::empty({0}, x.options());
  at::Tensor nbr = at::empty({est == Estimator::CrossEntropy ? 0 : sets, mx}, x.options().dtype(at::kLong));
  const cpu::Batch batch{sets, mx, my, d, lx.defined() ? lx.data_ptr<int64_t>() : nullptr,
                         ly.defined() ? ly.data_ptr<int64_t>() : nullptr};
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "eae_kernels estimators (CPU)", [&] {
    cpu::estimate_sets<scalar_t>(xc.data_ptr<scalar_t>(), cross ? yc.data_ptr<scalar_t>() : nullptr,
                                 batch, k, norm, eps, est, values.data_ptr<double>(),
                                 compute_grad ? gx.data_ptr<scalar_t>() : nullptr,
                                 (compute_grad && cross) ? gy.data_ptr<scalar_t>() : nullptr,
                                 nbr.numel() ? nbr.data_ptr<int64_t>() : nullptr, torch_parallel_for);
  });
  if (compute_grad) {
    gx = gx.to(x.scalar_type());
    if (cross) gy = gy.to(x.scalar_type());
  }
  return {values.to(acc), gx, gy, nbr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_entropy_sets_cpu(
    const at::Tensor& z, const c10::optional<at::Tensor>& lengths, int64_t k, double p, double eps,
    bool compute_grad) {
  auto [h, grad, unused, nbr] = estimate_cpu(Estimator::Entropy, z, c10::nullopt, lengths, c10::nullopt,
                                             k, p, eps, compute_grad);
  return {h, grad, nbr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_cross_entropy_cpu(
    const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& lengths_x,
    const c10::optional<at::Tensor>& lengths_y, int64_t k, double p, double eps, bool compute_grad) {
  auto [h, gx, gy, nbr] = estimate_cpu(Estimator::CrossEntropy, x, y, lengths_x, lengths_y, k, p, eps,
                                       compute_grad);
  return {h, gx, gy};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kl_divergence_cpu(
    const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& lengths_x,
    const c10::optional<at::Tensor>& lengths_y, int64_t k, double p, double eps, bool compute_grad) {
  auto [h, gx, gy, nbr] = estimate_cpu(Estimator::Divergence, x, y, lengths_x, lengths_y, k, p, eps,
                                       compute_grad);
  return {h, gx, gy};
}

std::tuple<at::Tensor, at::Tensor> koleo_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
                                             double eps, bool compute_grad, int64_t row_begin,
                                             int64_t row_end) {
  if (row_begin == 0 && row_end < 0) {
    auto [loss, grad, unused, nbr] = estimate_cpu(Estimator::KoLeo, x, c10::nullopt, lengths, c10::nullopt,
                                                  1, 2.0, eps, compute_grad);
    return {loss, grad};
  }
  // A row range of one set (the distributed global batch): that range's share of the loss.
  check_sets(x, c10::nullopt, "x");
  TORCH_CHECK(x.size(0) == 1 && !lengths.has_value(),
              "eae_kernels: koleo's row range needs one set (B = 1) and no lengths");
  TORCH_CHECK(eps >= 0, "eae_kernels: eps must be >= 0; got ", eps);
  const int64_t n = x.size(1), d = x.size(2);
  TORCH_CHECK(n > 1, "eae_kernels: koleo needs at least 2 rows; got ", n);
  const at::Tensor xc = x.to(accumulation_type(x.scalar_type())).contiguous();
  const cpu::RowRange rows = check_row_range(xc[0], row_begin, row_end);
  at::Tensor grad = compute_grad ? at::empty_like(xc) : at::empty({0}, x.options());
  const EstimateSpec spec = estimate_spec(Estimator::KoLeo, n, n, d, 1, Norm::L2);
  double loss = 0;
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "eae_kernels::koleo (CPU)", [&] {
    loss = cpu::estimate<scalar_t>(xc.data_ptr<scalar_t>(), n, rows, nullptr, 0, d, 1, Norm::L2, eps, spec,
                                   compute_grad ? grad.data_ptr<scalar_t>() : nullptr, nullptr, nullptr,
                                   nullptr, torch_parallel_for);
  });
  if (compute_grad) grad = grad.to(x.scalar_type());
  return {at::full({1}, loss, xc.options()), grad};
}

std::tuple<at::Tensor, at::Tensor> knn_sets_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& y,
                                                const c10::optional<at::Tensor>& lengths_x,
                                                const c10::optional<at::Tensor>& lengths_y, int64_t k,
                                                double p) {
  const at::Tensor lx = check_sets(x, lengths_x, "x");
  const bool cross = y.has_value();
  at::Tensor ly;
  if (cross) {
    ly = check_sets(*y, lengths_y, "y");
    check_pair(x, *y);
  }
  TORCH_CHECK(k >= 1, "eae_kernels: k must be >= 1; got ", k);
  const Norm norm = check_norm(p);
  const int64_t sets = x.size(0), mx = x.size(1), d = x.size(2), my = cross ? y->size(1) : mx;
  for (int64_t b = 0; b < sets; ++b) {  // an empty query set needs nothing
    const int64_t m = set_rows(lx, b, mx), n = cross ? set_rows(ly, b, my) : m;
    TORCH_CHECK(m == 0 || (cross ? n >= k : n > k), "eae_kernels: set ", b, " of ", cross ? "y" : "x",
                " has ", n, " rows but k=", k, cross ? ": needs at least k rows" : ": needs more than k rows");
  }
  const auto acc = accumulation_type(x.scalar_type());
  const at::Tensor xc = x.to(acc).contiguous();
  const at::Tensor yc = cross ? y->to(acc).contiguous() : at::Tensor();
  at::Tensor dist = at::empty({sets, mx, k}, xc.options());
  at::Tensor idx = at::empty({sets, mx, k}, xc.options().dtype(at::kLong));
  const cpu::Batch batch{sets, mx, my, d, lx.defined() ? lx.data_ptr<int64_t>() : nullptr,
                         ly.defined() ? ly.data_ptr<int64_t>() : nullptr};
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "eae_kernels::knn_sets (CPU)", [&] {
    cpu::knn_search_sets<scalar_t>(xc.data_ptr<scalar_t>(), cross ? yc.data_ptr<scalar_t>() : nullptr, batch,
                                   k, norm, dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                                   torch_parallel_for);
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
  m.def("kl_entropy_sets(Tensor z, Tensor? lengths, int k, float p, float eps, bool compute_grad)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("kl_cross_entropy(Tensor x, Tensor y, Tensor? lengths_x, Tensor? lengths_y, int k, float p,"
        " float eps, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  m.def("kl_divergence(Tensor x, Tensor y, Tensor? lengths_x, Tensor? lengths_y, int k, float p,"
        " float eps, bool compute_grad) -> (Tensor, Tensor, Tensor)");
  m.def("koleo(Tensor x, Tensor? lengths, float eps, bool compute_grad, int row_begin=0,"
        " int row_end=-1) -> (Tensor, Tensor)");
  m.def("knn_sets(Tensor x, Tensor? y, Tensor? lengths_x, Tensor? lengths_y, int k, float p)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(eae_kernels, CPU, m) {
  m.impl("kl_entropy", &eae::kl_entropy_cpu);
  m.impl("knn", &eae::knn_cpu);
  m.impl("kl_entropy_sets", &eae::kl_entropy_sets_cpu);
  m.impl("kl_cross_entropy", &eae::kl_cross_entropy_cpu);
  m.impl("kl_divergence", &eae::kl_divergence_cpu);
  m.impl("koleo", &eae::koleo_cpu);
  m.impl("knn_sets", &eae::knn_sets_cpu);
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
