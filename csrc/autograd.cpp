// Autograd for the ops, in C++ (the Autograd dispatch key, for every device), because the
// paper's regime is small batches where Python autograd overhead would cost more than the kernel.
//
//   kl_entropy: the forward already computed dh/dz, so backward is grad_h * dh/dz. Double
//     backward (differentiating that saved gradient) is the Hessian-vector product
//     kl_entropy_hvp, with each row's k-th neighbour held fixed (exact almost everywhere: the
//     neighbour assignment is piecewise constant in z).
//   knn: backward of the distances, knn_backward.
//   kl_entropy_sets: as kl_entropy, per set (double backward: kl_entropy_sets_hvp).
//   kl_cross_entropy, kl_divergence, koleo: backward scales the saved gradients by each set's
//     incoming gradient. Once differentiable: the backward runs without recording a graph, so a
//     double backward through them raises instead of silently treating the gradient as constant.
//   knn_sets: backward of the distances, knn_sets_backward (both x and y).
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
// Gradient in u = z_i - z_{nbr_i} of <a, w(r) dr/du>, a = v_i - v_{nbr_i}, for each norm; rows
// along dim 0 ... -2, coordinates along the last dim. scale: (d / N) per row (broadcast).
at::Tensor hvp_of_difference(const at::Tensor& u, const at::Tensor& a, const at::Tensor& scale, double p,
                             double eps) {
  const double e2 = eps * eps;
  if (p == 2.0) {  // w dr/du = u / (|u|^2 + e2)
    const at::Tensor q = (u * u).sum(-1, true) + e2;
    return scale * (a / q - 2.0 * u * ((a * u).sum(-1, true) / (q * q)));
  }
  if (p == 1.0) {  // w dr/du = r / (r^2 + e2) sign(u), r = |u|_1
    const at::Tensor r = u.abs().sum(-1, true);
    const at::Tensor sign = u.sign();
    const at::Tensor dw = (e2 - r * r) / (r * r + e2).pow(2);
    return scale * dw * (a * sign).sum(-1, true) * sign;
  }
  // inf: w dr/du = r / (r^2 + e2) sign(u_m) e_m, m = the lowest arg-max of |u|
  const at::Tensor m = u.abs().argmax(-1, true);
  const at::Tensor u_m = u.gather(-1, m);
  const at::Tensor r = u_m.abs();
  const at::Tensor dw = (e2 - r * r) / (r * r + e2).pow(2);
  return at::zeros_like(u).scatter(-1, m, scale * dw * a.gather(-1, m) * u_m.sign().pow(2));
}

// <v, d(dh/dz)/dz>. Row i = row_begin + r contributes (d/N) w(r_i) dr_i/du to dh/dz_i and the
// negative to its neighbour, u = z_i - z_{nbr_r}; so <v, .> contributes (d/N) <a, w(r) dr/du>
// with a = v_i - v_{nbr_r}, whose gradient in u is hvp_of_difference.
at::Tensor kl_entropy_hvp(const at::Tensor& z_in, const at::Tensor& nbr, const at::Tensor& v_in,
                          double p, double eps, int64_t row_begin) {
  const auto dtype = accumulation_type(z_in.scalar_type());
  const at::Tensor z = z_in.to(dtype), v = v_in.to(dtype);
  const int64_t n = z.size(0), d = z.size(1);
  const at::Tensor scale = at::scalar_tensor(static_cast<double>(d) / static_cast<double>(n), z.options());
  const at::Tensor rows = at::arange(row_begin, row_begin + nbr.size(0), nbr.options());
  const at::Tensor u = z.index_select(0, rows) - z.index_select(0, nbr);
  const at::Tensor a = v.index_select(0, rows) - v.index_select(0, nbr);
  const at::Tensor grad_u = hvp_of_difference(u, a, scale, p, eps);
  return at::zeros_like(z).index_add(0, rows, grad_u).index_add(0, nbr, -grad_u).to(z_in.scalar_type());
}

// kl_entropy_hvp on each set of a batch: z, v (B, M, d), nbr (B, M) with -1 for padded rows (a
// set's N is its number of valid rows, so no lengths are needed and no shape depends on data).
at::Tensor kl_entropy_sets_hvp(const at::Tensor& z_in, const at::Tensor& nbr, const at::Tensor& v_in,
                               double p, double eps) {
  const auto dtype = accumulation_type(z_in.scalar_type());
  const at::Tensor z = z_in.to(dtype), v = v_in.to(dtype);
  const int64_t sets = z.size(0), m = z.size(1), d = z.size(2);
  const at::Tensor valid = nbr >= 0;
  const at::Tensor rows = valid.sum(1, true).to(dtype).unsqueeze(-1);  // (B, 1, 1)
  const at::Tensor scale = at::where(rows > 0, static_cast<double>(d) / rows, at::zeros_like(rows));
  const at::Tensor offsets = at::arange(sets, nbr.options()).mul(m).unsqueeze(1);
  const at::Tensor flat = at::where(valid, nbr + offsets, offsets).reshape(-1);
  const at::Tensor z_flat = z.reshape({sets * m, d}), v_flat = v.reshape({sets * m, d});
  const at::Tensor u = z - z_flat.index_select(0, flat).view({sets, m, d});
  const at::Tensor a = v - v_flat.index_select(0, flat).view({sets, m, d});
  const at::Tensor grad_u = hvp_of_difference(u, a, scale, p, eps) * valid.unsqueeze(-1);
  return (grad_u.reshape({sets * m, d}).index_add(0, flat, -grad_u.reshape({sets * m, d})))
      .view({sets, m, d})
      .to(z_in.scalar_type());
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

// d/d(x, y) of sum(grad_dist * dist) for knn_sets: x (B, M, d), y (B, N, d) or None (self),
// idx (B, M, k) with -1 for padded query rows. Returns (grad_x, grad_y); grad_y is empty (0,) in
// the self case (its part is in grad_x).
std::tuple<at::Tensor, at::Tensor> knn_sets_backward(const at::Tensor& grad_dist, const at::Tensor& x_in,
                                                     const c10::optional<at::Tensor>& y_in,
                                                     const at::Tensor& dist, const at::Tensor& idx,
                                                     double p) {
  const at::Tensor x = x_in.to(dist.scalar_type());
  const at::Tensor ref = y_in.has_value() ? y_in->to(dist.scalar_type()) : x;
  const int64_t sets = x.size(0), m = x.size(1), n = ref.size(1), d = x.size(2), k = idx.size(2);
  const at::Tensor valid = idx >= 0;
  const at::Tensor offsets = at::arange(sets, idx.options()).mul(n).view({sets, 1, 1});
  const at::Tensor flat = at::where(valid, idx + offsets, at::zeros_like(idx)).reshape(-1);
  const at::Tensor ref_flat = ref.reshape({sets * n, d});
  const at::Tensor diff = x.unsqueeze(2) - ref_flat.index_select(0, flat).view({sets, m, k, d});
  at::Tensor direction;
  if (p == 2.0) {
    direction = diff / at::where(dist > 0, dist, at::ones_like(dist)).unsqueeze(-1);
  } else if (p == 1.0) {
    direction = diff.sign();
  } else {
    const at::Tensor mx = diff.abs().argmax(-1, true);
    direction = at::zeros_like(diff).scatter(-1, mx, diff.gather(-1, mx).sign());
  }
  const at::Tensor g = (grad_dist * valid).unsqueeze(-1) * direction;
  const at::Tensor grad_ref =
      at::zeros_like(ref_flat).index_add(0, flat, -g.reshape({-1, d})).view({sets, n, d});
  at::Tensor grad_x = g.sum(2);
  if (!y_in.has_value()) return {(grad_x + grad_ref).to(x_in.scalar_type()), at::empty({0}, x_in.options())};
  return {grad_x.to(x_in.scalar_type()), grad_ref.to(y_in->scalar_type())};
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

// Raised by a backward whose forward skipped the gradient (compute_grad was false).
void check_grad_computed(AutogradContext* ctx, const char* op) {
  TORCH_CHECK(ctx->saved_data["compute_grad"].toBool(), "eae_kernels.", op,
              ": the gradient was not computed in the forward pass because no input required grad "
              "(or grad mode was off) when it was called");
}

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
    check_grad_computed(ctx, "kl_entropy");
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

at::Tensor call_kl_entropy_sets_hvp(const at::Tensor& z, const at::Tensor& nbr, const at::Tensor& v,
                                    double p, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("eae_kernels::kl_entropy_sets_hvp", "")
                       .typed<decltype(kl_entropy_sets_hvp)>();
  return op.call(z, nbr, v, p, eps);
}

// Each set's incoming gradient (B,) times the saved per-set gradient (B, M, d).
at::Tensor scale_by_set(const at::Tensor& saved, const at::Tensor& grad_value) {
  return saved * grad_value.to(saved.scalar_type()).view({-1, 1, 1});
}

class KlEntropySetsFunction : public torch::autograd::Function<KlEntropySetsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& z,
                               const c10::optional<at::Tensor>& lengths, int64_t k, double p, double eps,
                               bool compute_grad) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("eae_kernels::kl_entropy_sets", "")
                         .typed<KlOutputs(const at::Tensor&, const c10::optional<at::Tensor>&, int64_t,
                                          double, double, bool)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [h, grad, nbr] = op.call(z, lengths, k, p, eps, compute_grad);
    ctx->saved_data["p"] = p;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({z, grad, nbr});
    ctx->mark_non_differentiable({nbr});
    ctx->set_materialize_grads(false);
    return {h, grad, nbr};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_grad_computed(ctx, "kl_entropy");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &z = saved[0], &grad = saved[1], &nbr = saved[2];
    at::Tensor grad_z = grads[0].defined() ? scale_by_set(grad, grads[0]) : at::zeros_like(grad);
    if (grads[1].defined())
      grad_z = grad_z + call_kl_entropy_sets_hvp(z, nbr, grads[1], ctx->saved_data["p"].toDouble(),
                                                 ctx->saved_data["eps"].toDouble());
    return {grad_z, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

using PairOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using PairSignature = PairOutputs(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                  const c10::optional<at::Tensor>&, int64_t, double, double, bool);

// kl_cross_entropy and kl_divergence: (x, y) -> (value, d value/dx, d value/dy).
template <const char* kName>
class PairFunction : public torch::autograd::Function<PairFunction<kName>> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                               const c10::optional<at::Tensor>& lengths_x,
                               const c10::optional<at::Tensor>& lengths_y, int64_t k, double p, double eps,
                               bool compute_grad) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow((std::string("eae_kernels::") + kName).c_str(), "")
                         .typed<PairSignature>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [value, gx, gy] = op.call(x, y, lengths_x, lengths_y, k, p, eps, compute_grad);
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({gx, gy});
    ctx->mark_non_differentiable({gx, gy});
    return {value, gx, gy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_grad_computed(ctx, kName);
    at::NoGradGuard once_differentiable;
    const auto saved = ctx->get_saved_variables();
    return {scale_by_set(saved[0], grads[0]), scale_by_set(saved[1], grads[0]), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

constexpr char kCrossEntropy[] = "kl_cross_entropy";
constexpr char kDivergence[] = "kl_divergence";

class KoleoFunction : public torch::autograd::Function<KoleoFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const c10::optional<at::Tensor>& lengths, double eps, bool compute_grad,
                               int64_t row_begin, int64_t row_end) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("eae_kernels::koleo", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                   const c10::optional<at::Tensor>&, double,
                                                                   bool, int64_t, int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = op.call(x, lengths, eps, compute_grad, row_begin, row_end);
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_grad_computed(ctx, "koleo_loss");
    at::NoGradGuard once_differentiable;
    return {scale_by_set(ctx->get_saved_variables()[0], grads[0]), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> call_knn_sets_backward(const at::Tensor& grad_dist, const at::Tensor& x,
                                                          const c10::optional<at::Tensor>& y,
                                                          const at::Tensor& dist, const at::Tensor& idx,
                                                          double p) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("eae_kernels::knn_sets_backward", "")
                       .typed<decltype(knn_sets_backward)>();
  return op.call(grad_dist, x, y, dist, idx, p);
}

class KnnSetsFunction : public torch::autograd::Function<KnnSetsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const c10::optional<at::Tensor>& y,
                               const c10::optional<at::Tensor>& lengths_x,
                               const c10::optional<at::Tensor>& lengths_y, int64_t k, double p) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("eae_kernels::knn_sets", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const c10::optional<at::Tensor>&,
                             const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, int64_t,
                             double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dist, idx] = op.call(x, y, lengths_x, lengths_y, k, p);
    ctx->saved_data["p"] = p;
    ctx->saved_data["cross"] = y.has_value();
    ctx->save_for_backward({x, y.has_value() ? *y : at::Tensor(), dist, idx});
    ctx->mark_non_differentiable({idx});
    return {dist, idx};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool cross = ctx->saved_data["cross"].toBool();
    const c10::optional<at::Tensor> y = cross ? c10::optional<at::Tensor>(saved[1]) : c10::nullopt;
    auto [gx, gy] = call_knn_sets_backward(grads[0], saved[0], y, saved[2], saved[3],
                                           ctx->saved_data["p"].toDouble());
    return {gx, cross ? gy : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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

KlOutputs kl_entropy_sets_autograd(const at::Tensor& z, const c10::optional<at::Tensor>& lengths, int64_t k,
                                   double p, double eps, bool compute_grad) {
  auto out = KlEntropySetsFunction::apply(z, lengths, k, p, eps, compute_grad);
  return {out[0], out[1], out[2]};
}

template <const char* kName>
PairOutputs pair_autograd(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& lengths_x,
                          const c10::optional<at::Tensor>& lengths_y, int64_t k, double p, double eps,
                          bool compute_grad) {
  auto out = PairFunction<kName>::apply(x, y, lengths_x, lengths_y, k, p, eps, compute_grad);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> koleo_autograd(const at::Tensor& x, const c10::optional<at::Tensor>& lengths,
                                                  double eps, bool compute_grad, int64_t row_begin,
                                                  int64_t row_end) {
  auto out = KoleoFunction::apply(x, lengths, eps, compute_grad, row_begin, row_end);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> knn_sets_autograd(const at::Tensor& x, const c10::optional<at::Tensor>& y,
                                                     const c10::optional<at::Tensor>& lengths_x,
                                                     const c10::optional<at::Tensor>& lengths_y, int64_t k,
                                                     double p) {
  auto out = KnnSetsFunction::apply(x, y, lengths_x, lengths_y, k, p);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace eae

TORCH_LIBRARY_FRAGMENT(eae_kernels, m) {
  m.def("kl_entropy_hvp(Tensor z, Tensor nbr, Tensor v, float p, float eps, int row_begin) -> Tensor");
  m.def("knn_backward(Tensor grad_dist, Tensor z, Tensor dist, Tensor idx, float p) -> Tensor");
  m.def("kl_entropy_sets_hvp(Tensor z, Tensor nbr, Tensor v, float p, float eps) -> Tensor");
  m.def("knn_sets_backward(Tensor grad_dist, Tensor x, Tensor? y, Tensor dist, Tensor idx, float p)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(eae_kernels, CompositeImplicitAutograd, m) {
  m.impl("kl_entropy_hvp", &eae::kl_entropy_hvp);
  m.impl("knn_backward", &eae::knn_backward);
  m.impl("kl_entropy_sets_hvp", &eae::kl_entropy_sets_hvp);
  m.impl("knn_sets_backward", &eae::knn_sets_backward);
}

TORCH_LIBRARY_IMPL(eae_kernels, Autograd, m) {
  m.impl("kl_entropy", &eae::kl_entropy_autograd);
  m.impl("knn", &eae::knn_autograd);
  m.impl("kl_entropy_sets", &eae::kl_entropy_sets_autograd);
  m.impl("kl_cross_entropy", &eae::pair_autograd<eae::kCrossEntropy>);
  m.impl("kl_divergence", &eae::pair_autograd<eae::kDivergence>);
  m.impl("koleo", &eae::koleo_autograd);
  m.impl("knn_sets", &eae::knn_sets_autograd);
}
