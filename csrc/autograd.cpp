// Autograd for the ops, in C++ (the Autograd dispatch key, for every device), because the
// paper's regime is small batches where Python autograd overhead would cost more than the kernel.
//
//   kl_entropy: the forward already computed dh/dz, so backward is grad_h * dh/dz. Double
//     backward (differentiating that saved gradient) is the Hessian-vector product
//     kl_entropy_hvp, with each row's k-th neighbour held fixed (exact almost everywhere: the
//     neighbour assignment is piecewise constant in z).
//   knn: backward of the distances, knn_backward.
//
// kl_entropy_hvp and knn_backward are ops of their own, written with ATen ops and registered as
// CompositeImplicitAutograd: they run on any device, are differentiable again, and torch.compile
// traces through them. The Triton backend's ops (Python) reuse them for their autograd.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "bindings.h"

namespace eae {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// <v, d(dh/dz)/dz>. Row i = row_begin + r contributes (d/N) w(r_i) dr_i/du to dh/dz_i and the
// negative to its neighbour, u = z_i - z_{nbr_r}; so <v, .> contributes (d/N) <a, w(r) dr/du>
// with a = v_i - v_{nbr_r}, whose gradient in u is formed for each norm below.
at::Tensor kl_entropy_hvp(const at::Tensor& z_in, const at::Tensor& nbr, const at::Tensor& v_in,
                          double p, double eps, int64_t row_begin) {
  const auto dtype = accumulation_type(z_in.scalar_type());
  const at::Tensor z = z_in.to(dtype), v = v_in.to(dtype);
  const int64_t n = z.size(0), d = z.size(1);
  const double scale = static_cast<double>(d) / static_cast<double>(n);
  const double e2 = eps * eps;
  const at::Tensor rows = at::arange(row_begin, row_begin + nbr.size(0), nbr.options());
  const at::Tensor u = z.index_select(0, rows) - z.index_select(0, nbr);
  const at::Tensor a = v.index_select(0, rows) - v.index_select(0, nbr);
  at::Tensor grad_u;
  if (p == 2.0) {  // w dr/du = u / (|u|^2 + e2)
    const at::Tensor q = (u * u).sum(1, true) + e2;
    grad_u = scale * (a / q - 2.0 * u * ((a * u).sum(1, true) / (q * q)));
  } else if (p == 1.0) {  // w dr/du = r / (r^2 + e2) sign(u), r = |u|_1
    const at::Tensor r = u.abs().sum(1, true);
    const at::Tensor sign = u.sign();
    const at::Tensor dw = (e2 - r * r) / (r * r + e2).pow(2);
    grad_u = scale * dw * (a * sign).sum(1, true) * sign;
  } else {  // inf: w dr/du = r / (r^2 + e2) sign(u_m) e_m, m = the lowest arg-max of |u|
    const at::Tensor m = u.abs().argmax(1, true);
    const at::Tensor u_m = u.gather(1, m);
    const at::Tensor r = u_m.abs();
    const at::Tensor dw = (e2 - r * r) / (r * r + e2).pow(2);
    grad_u = at::zeros_like(u).scatter(1, m, scale * dw * a.gather(1, m) * u_m.sign().pow(2));
  }
  return at::zeros_like(z).index_add(0, rows, grad_u).index_add(0, nbr, -grad_u).to(z_in.scalar_type());
}

// d/dz of sum(grad_dist * dist): +g u on row i and -g u on row idx[i, m], u = d dist / d z_i,
// the unit direction of the norm (0 for coincident rows). O(N k d) memory.
at::Tensor knn_backward(const at::Tensor& grad_dist, const at::Tensor& z_in, const at::Tensor& dist,
                        const at::Tensor& idx, double p) {
  const at::Tensor z = z_in.to(dist.scalar_type());
  const int64_t d = z.size(1);
  const at::Tensor diff = z.unsqueeze(1) - z.index_select(0, idx.reshape(-1)).view({idx.size(0), idx.size(1), d});
  at::Tensor direction;
  if (p == 2.0) {
    direction = diff / at::where(dist > 0, dist, at::ones_like(dist)).unsqueeze(-1);
  } else if (p == 1.0) {
    direction = diff.sign();
  } else {
    const at::Tensor m = diff.abs().argmax(-1, true);
    direction = at::zeros_like(diff).scatter(-1, m, diff.gather(-1, m).sign());
  }
  const at::Tensor g = grad_dist.unsqueeze(-1) * direction;
  return g.sum(1).index_add(0, idx.reshape(-1), -g.reshape({-1, d})).to(z_in.scalar_type());
}

at::Tensor call_kl_entropy_hvp(const at::Tensor& z, const at::Tensor& nbr, const at::Tensor& v,
                               double p, double eps, int64_t row_begin) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("eae_kernels::kl_entropy_hvp", "")
                       .typed<decltype(kl_entropy_hvp)>();
  return op.call(z, nbr, v, p, eps, row_begin);
}

at::Tensor call_knn_backward(const at::Tensor& grad_dist, const at::Tensor& z,
                             const at::Tensor& dist, const at::Tensor& idx, double p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("eae_kernels::knn_backward", "")
                       .typed<decltype(knn_backward)>();
  return op.call(grad_dist, z, dist, idx, p);
}

using KlOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

class KlEntropyFunction : public torch::autograd::Function<KlEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, int64_t k, double p,
                               double eps, bool compute_grad, bool deterministic,
                               int64_t row_begin, int64_t row_end) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("eae_kernels::kl_entropy", "")
                         .typed<KlOutputs(const at::Tensor&, int64_t, double, double, bool, bool,
                                          int64_t, int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [h, grad, nbr] = op.call(z, k, p, eps, compute_grad, deterministic, row_begin, row_end);
    ctx->saved_data["p"] = p;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["row_begin"] = row_begin;
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({z, grad, nbr});
    ctx->mark_non_differentiable({nbr});
    // Unused output gradients stay undefined: a plain backward skips the HVP.
    ctx->set_materialize_grads(false);
    return {h, grad, nbr};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(ctx->saved_data["compute_grad"].toBool(),
                "eae_kernels.kl_entropy: the gradient was not computed in the forward pass because "
                "z did not require grad (or grad mode was off) when kl_entropy was called");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &grad = saved[1], &nbr = saved[2];
    at::Tensor grad_z = grads[0].defined() ? grad * grads[0] : at::zeros_like(grad);
    if (grads[1].defined())
      grad_z = grad_z + call_kl_entropy_hvp(z, nbr, grads[1], ctx->saved_data["p"].toDouble(),
                                            ctx->saved_data["eps"].toDouble(),
                                            ctx->saved_data["row_begin"].toInt());
    return {grad_z, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class KnnFunction : public torch::autograd::Function<KnnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z, int64_t k, double p) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("eae_kernels::knn", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dist, idx] = op.call(z, k, p);
    ctx->saved_data["p"] = p;
    ctx->save_for_backward({z, dist, idx});
    ctx->mark_non_differentiable({idx});
    return {dist, idx};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {call_knn_backward(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["p"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

KlOutputs kl_entropy_autograd(const at::Tensor& z, int64_t k, double p, double eps,
                              bool compute_grad, bool deterministic, int64_t row_begin,
                              int64_t row_end) {
  auto out = KlEntropyFunction::apply(z, k, p, eps, compute_grad, deterministic, row_begin, row_end);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> knn_autograd(const at::Tensor& z, int64_t k, double p) {
  auto out = KnnFunction::apply(z, k, p);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY_FRAGMENT(eae_kernels, m) {
  m.def("kl_entropy_hvp(Tensor z, Tensor nbr, Tensor v, float p, float eps, int row_begin) -> Tensor");
  m.def("knn_backward(Tensor grad_dist, Tensor z, Tensor dist, Tensor idx, float p) -> Tensor");
}

TORCH_LIBRARY_IMPL(eae_kernels, CompositeImplicitAutograd, m) {
  m.impl("kl_entropy_hvp", &eae::kl_entropy_hvp);
  m.impl("knn_backward", &eae::knn_backward);
}

TORCH_LIBRARY_IMPL(eae_kernels, Autograd, m) {
  m.impl("kl_entropy", &eae::kl_entropy_autograd);
  m.impl("knn", &eae::knn_autograd);
}
