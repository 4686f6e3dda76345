"""The reference backend's ops: the naive implementations of ``reference`` behind the same
signatures and outputs as the compiled ops (csrc/bindings.cpp), so that the backend table
(``backends.py``) can hand either to the public functions and to the distributed mode.

The value is always differentiable by autograd. When ``compute_grad`` is true the gradient the
compiled ops return is returned as well (by ``torch.autograd.grad``); otherwise those outputs are
empty, as the compiled ops' are. Neighbour-index outputs are empty: only the compiled ops'
double backward needs them.
"""

from __future__ import annotations

import torch

from . import reference
from ._validate import accumulation_dtype


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _value_and_grads(fn, inputs, compute_grad: bool):
    """fn(*inputs) and, when compute_grad, its gradient with respect to each input (every set's
    value depends on its own rows only, so the gradient of the sum holds each set's gradient)."""
    if not compute_grad:
        return fn(*inputs), [_empty(t) for t in inputs]
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_(True) for t in inputs]
        value = fn(*leaves)
        grads = torch.autograd.grad(value.sum(), leaves, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    return value, grads


def kl_entropy(z, k, p, eps, compute_grad, deterministic=False, row_begin=0, row_end=-1):
    end = z.shape[0] if row_end < 0 else row_end
    h, (grad,) = _value_and_grads(
        lambda t: reference.kl_entropy(t, k, p, eps, exact=True, row_range=(row_begin, end)), [z], compute_grad
    )
    return h, grad, _empty(z).long()


def knn(z, k, p):
    return reference.knn_distances(z, k, p, exact=True)


def kl_entropy_sets(z, lengths, k, p, eps, compute_grad):
    h, (grad,) = _value_and_grads(
        lambda t: reference.kl_entropy(t, k, p, eps, exact=True, lengths=lengths), [z], compute_grad
    )
    return h, grad, _empty(z).long()


def kl_cross_entropy(x, y, lengths_x, lengths_y, k, p, eps, compute_grad):
    h, (gx, gy) = _value_and_grads(
        lambda a, b: reference.kl_cross_entropy(a, b, k, p, eps, exact=True, lengths_x=lengths_x, lengths_y=lengths_y),
        [x, y],
        compute_grad,
    )
    return h, gx, gy


def kl_divergence(x, y, lengths_x, lengths_y, k, p, eps, compute_grad):
    h, (gx, gy) = _value_and_grads(
        lambda a, b: reference.kl_divergence(a, b, k, p, eps, exact=True, lengths_x=lengths_x, lengths_y=lengths_y),
        [x, y],
        compute_grad,
    )
    return h, gx, gy


def koleo(x, lengths, eps, compute_grad, row_begin=0, row_end=-1):
    """x: (B, N, d) rows already L2-normalised, as the compiled op takes them."""
    row_range = None if (row_begin == 0 and row_end < 0) else (row_begin, x.shape[1] if row_end < 0 else row_end)

    def loss(t):
        return reference._koleo_normalised(t.to(accumulation_dtype(t.dtype)), eps, True, lengths, row_range)

    value, (grad,) = _value_and_grads(loss, [x], compute_grad)
    return value, grad


def knn_sets(x, y, lengths_x, lengths_y, k, p):
    return reference.knn_distances(x, k, p, y=y, lengths_x=lengths_x, lengths_y=lengths_y, exact=True)
