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


# ---- Batches of sets (B, M, d) with optional lengths, and pairs of sets (x, y) ----


def check_sets(x, lengths=None, *, name: str = "x", lengths_name: str = "lengths"):
    """``x`` must be a floating tensor (M, d) or (B, M, d) with d >= 1; ``lengths``, if given, a
    (B,) int64 tensor on x's device with every value in [0, M] (only with the batch dimension).
    Returns ``(x as (B, M, d), lengths)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d) or (B, N, d); got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {x.dtype}"
        )
    if x.dim() not in (2, 3):
        raise ValueError(
            f"{name} must be 2-D (N, d) or 3-D (B, N, d) (rows are samples); got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one column (d >= 1); got shape {tuple(x.shape)}")
    if lengths is None:
        return (x if x.dim() == 3 else x.unsqueeze(0)), None
    if x.dim() != 3:
        raise ValueError(
            f"{lengths_name} needs a batch of sets: {name} must be 3-D (B, N, d); got shape {tuple(x.shape)}"
        )
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{lengths_name} must be a (B,) int64 tensor or None; got {type(lengths).__name__}")
    if lengths.dtype != torch.int64:
        raise TypeError(f"{lengths_name} must have dtype int64 (torch.long); got {lengths.dtype}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(
            f"{lengths_name} must have shape (B,) = ({x.shape[0]},), one length per set of {name}; "
            f"got {tuple(lengths.shape)}"
        )
    if lengths.device != x.device:
        raise ValueError(f"{lengths_name} must be on {name}'s device {x.device}; got {lengths.device}")
    sizes = lengths.tolist()
    for b, n in enumerate(sizes):
        if not 0 <= n <= x.shape[1]:
            raise ValueError(
                f"{lengths_name}[{b}] = {n} is outside [0, {x.shape[1]}]: a set of {name} has at most "
                f"N = {x.shape[1]} rows"
            )
    return x, lengths


def check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    """A separate reference set ``y`` matches ``x`` (both already checked by ``check_sets``):
    the same layout ((N, d) or (B, N, d)), number of sets, columns d, dtype and device."""
    if y.dim() != x.dim():
        raise ValueError(
            f"x and y must both be 2-D (N, d) or both 3-D (B, N, d); got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() == 3 and y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must have the same number of sets B; got {x.shape[0]} and {y.shape[0]}")
    if y.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"x and y must have the same number of columns d; got d={x.shape[-1]} for x and d={y.shape[-1]} for y"
        )
    if y.device != x.device:
        raise ValueError(f"y must be on x's device {x.device}; got {y.device}")
    if y.dtype != x.dtype:
        raise TypeError(f"x and y must have the same dtype; got {x.dtype} for x and {y.dtype} for y")


def check_set_sizes(
    k: int,
    lengths_x,
    sets: int,
    rows_x: int,
    *,
    self_name: str | None = None,
    lengths_y=None,
    rows_y: int | None = None,
    allow_empty: bool = False,
) -> None:
    """Every set is large enough for its searches: with ``self_name``, the k-th nearest *other*
    row needs more than k rows in each set of that tensor; with ``rows_y`` (a reference set y),
    the k-th nearest row of y needs at least k rows of y and a query row in x. ``allow_empty``:
    a set with no query row needs nothing (knn_distances)."""
    sizes_x = lengths_x.tolist() if lengths_x is not None else [rows_x] * sets
    sizes_y = None
    if rows_y is not None:
        sizes_y = lengths_y.tolist() if lengths_y is not None else [rows_y] * sets
    single = sets == 1 and lengths_x is None and lengths_y is None

    def which(name: str, b: int) -> str:
        return name if single else f"set {b} of {name}"

    for b, m in enumerate(sizes_x):
        if m == 0 and allow_empty:
            continue
        if self_name is not None and m <= k:
            raise ValueError(
                f"{which(self_name, b)} has N={m} rows but k={k}: the k-th nearest other row needs "
                f"N > k (N >= {k + 1})"
            )
        if sizes_y is not None:
            if m == 0:
                raise ValueError(f"{which('x', b)} is empty: the estimate needs at least one row of x")
            if sizes_y[b] < k:
                raise ValueError(
                    f"{which('y', b)} has N={sizes_y[b]} rows but k={k}: the k-th nearest row of y "
                    f"needs N >= k"
                )
