"""Fake (meta) kernels of the compiled ops: the output shapes and dtypes that torch.compile traces
with. Kept apart from ops.py so that every backend module can use them without importing the
public functions."""

from __future__ import annotations

import torch

from ._validate import accumulation_dtype


def _grad_like(x: torch.Tensor, compute_grad: bool) -> torch.Tensor:
    return x.new_empty(x.shape) if compute_grad else x.new_empty((0,))


def kl_entropy(z, k, p, eps, compute_grad, deterministic, row_begin=0, row_end=-1):
    begin, end = row_begin, (z.shape[0] if row_end < 0 else row_end)
    h = z.new_empty((), dtype=accumulation_dtype(z.dtype))
    nbr = z.new_empty((end - begin,) if compute_grad else (0,), dtype=torch.int64)
    return h, _grad_like(z, compute_grad), nbr


def knn(z, k, p):
    n = z.shape[0]
    return z.new_empty((n, k), dtype=accumulation_dtype(z.dtype)), z.new_empty((n, k), dtype=torch.int64)


def _values(x):
    return x.new_empty((x.shape[0],), dtype=accumulation_dtype(x.dtype))


def kl_entropy_sets(z, lengths, k, p, eps, compute_grad):
    return _values(z), _grad_like(z, compute_grad), z.new_empty(z.shape[:2], dtype=torch.int64)


def kl_cross_entropy(x, y, lengths_x, lengths_y, k, p, eps, compute_grad):
    return _values(x), _grad_like(x, compute_grad), _grad_like(y, compute_grad)


kl_divergence = kl_cross_entropy


def koleo(x, lengths, eps, compute_grad, row_begin=0, row_end=-1):
    return _values(x), _grad_like(x, compute_grad)


def knn_sets(x, y, lengths_x, lengths_y, k, p):
    shape = (x.shape[0], x.shape[1], k)
    return x.new_empty(shape, dtype=accumulation_dtype(x.dtype)), x.new_empty(shape, dtype=torch.int64)


def register() -> None:
    """Registers every fake kernel for the compiled ops of the same name."""
    for name in ("kl_entropy", "knn", "kl_entropy_sets", "kl_cross_entropy", "kl_divergence", "koleo", "knn_sets"):
        torch.library.register_fake(f"eae_kernels::{name}")(globals()[name])
