"""Argument checks shared by every entry point (fused ops and the reference).

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (bad value),
with a message that names the argument and says what is accepted.
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
DEFAULT_EPS = 1e-8


def check_z(z, k: int, *, name: str = "z") -> None:
    """`z` must be a 2-D floating tensor (N, d) with N > k and d >= 1."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d); got {type(z).__name__}")
    if z.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {z.dtype}"
        )
    if z.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (N, d) (rows are samples); got {z.dim()}-D shape {tuple(z.shape)}"
        )
    n, d = z.shape
    if d == 0:
        raise ValueError(f"{name} must have at least one column (d >= 1); got shape {tuple(z.shape)}")
    if n <= k:
        raise ValueError(
            f"{name} has N={n} rows but k={k}: the k-th nearest other row needs N > k (N >= {k + 1})"
        )


def check_k(k) -> int:
    """`k` must be a Python int >= 1 (bool is rejected)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int >= 1; got {k!r} of type {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be an int >= 1; got {k}")
    return int(k)


def check_p(p) -> float:
    """`p` must be 1, 2 or inf; returns it as a float (1.0, 2.0 or math.inf)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be 1, 2 or float('inf'); got {p!r} of type {type(p).__name__}")
    p = float(p)
    if p not in (1.0, 2.0, math.inf):
        raise ValueError(f"p must be 1, 2 or float('inf'); got {p!r}")
    return p


def check_eps(eps) -> float:
    """`eps` must be a finite real number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number >= 0; got {eps!r} of type {type(eps).__name__}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite real number >= 0; got {eps!r}")
    return eps


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    return backend


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half inputs are accumulated (and H is returned) in float32; float32/float64 keep their dtype."""
    return torch.float32 if dtype in HALF_DTYPES else dtype
