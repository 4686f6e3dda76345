r"""Mutual information: the Kraskov–Stögbauer–Grassberger (KSG) k-nearest-neighbour estimator and
the Gaussian closed form.

    from eae_kernels import ksg_mutual_information, gaussian_mutual_information

    mi = ksg_mutual_information(x, y, k=3)              # x (N, dx), y (N, dy): 0-dim, nats
    mi = ksg_mutual_information(xb, yb, lengths=lens)   # (B, N, dx), (B, N, dy), ragged: (B,)

How it is computed, per set of N paired rows (two passes, O(N (dx + dy + k)) memory, no N x N
buffer): pass 1 finds each row's k nearest other rows in the joint space with the package's
fused top-k search at p = inf on the concatenated rows [x, y] (the joint max-norm distance
max(||x_i - x_j||, ||y_i - y_j||) is exactly the max-norm of the concatenation); pass 2 is a
range-count kernel that counts, for every row, the other rows within its radius in each marginal.

Backends: ``"cpu"`` runs both passes in one compiled op (``torch.ops.eae_kernels.
ksg_mutual_information``). ``"cuda"`` and ``"triton"`` compose their backend's k-NN op with their
range-count kernel (``torch.ops.eae_kernels.ksg_range_count`` on CUDA, ``triton_ksg.py``).
``"reference"`` is a dense torch version (O(N^2) memory) used as the fallback when no compiled
backend is available.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import _extension, backends
from ._constants import digamma_int
from ._validate import FLOAT_DTYPES, HALF_DTYPES, accumulation_dtype, check_k

__all__ = ["ksg_mutual_information", "gaussian_mutual_information"]

KSG_BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def _check_pair(x, y) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (N, d) or (B, N, d); got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got {t.dtype}"
                " (for discrete-valued data, convert to float and add a small jitter: see the docstring)"
            )
        if t.dim() not in (2, 3):
            raise ValueError(
                f"{name} must be 2-D (N, d) or 3-D (B, N, d) (rows are samples); got {t.dim()}-D shape {tuple(t.shape)}"
            )
        if t.shape[-1] == 0:
            raise ValueError(f"{name} must have at least one column (d >= 1); got shape {tuple(t.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y must have the same dtype; got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device; got {x.device} and {y.device}")
    if x.dim() != y.dim():
        raise ValueError(
            f"x and y must both be 2-D (N, d) or both 3-D (B, N, d); got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[:-1] != y.shape[:-1]:
        what = "number of rows N" if x.dim() == 2 else "batch size B and number of rows N"
        raise ValueError(
            f"x and y must have the same {what} (row i of x is paired with row i of y); "
            f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
        )


def _check_variant(variant) -> int:
    if isinstance(variant, bool) or not isinstance(variant, numbers.Integral) or variant not in (1, 2):
        raise ValueError(f"variant must be 1 or 2 (the paper's algorithm 1 or 2); got {variant!r}")
    return int(variant)


def _check_lengths(lengths, x: torch.Tensor, k: int) -> list[int]:
    """The rows of each set: N for every set without lengths, else lengths (checked)."""
    n = x.shape[-2]
    if lengths is None:
        if n <= k:
            raise ValueError(f"x and y have N={n} rows but k={k}: the k-th nearest other row needs N > k (N >= {k + 1})")
        return [n] * (x.shape[0] if x.dim() == 3 else 1)
    if x.dim() != 3:
        raise ValueError("lengths is only accepted with batched inputs x (B, N, dx) and y (B, N, dy)")
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be an int64 tensor of shape (B,) = ({x.shape[0]},); got {type(lengths).__name__}")
    if lengths.dtype != torch.int64:
        raise TypeError(f"lengths must be an int64 tensor of shape (B,) = ({x.shape[0]},); got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (x.shape[0],):
        raise ValueError(f"lengths must have shape (B,) = ({x.shape[0]},); got {tuple(lengths.shape)}")
    if lengths.device != x.device:
        raise ValueError(f"lengths must be on x's device {x.device}; got {lengths.device}")
    rows = [int(v) for v in lengths.tolist()]
    for b, m in enumerate(rows):
        if not k < m <= n:
            raise ValueError(
                f"lengths[{b}] = {m}: each set needs k < lengths[b] <= N (k={k}, N={n}); "
                "the k-th nearest other row needs at least k + 1 rows"
            )
    return rows


# ---------------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------------


def _resolve_backend(backend, x: torch.Tensor) -> str:
    if backend not in KSG_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, KSG_BACKENDS))}; got {backend!r}")
    return backends.resolve(backend, backends.KSG_OP, x)


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------


def ksg_mutual_information(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 3,
    *,
    variant: int = 1,
    lengths: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Kraskov–Stögbauer–Grassberger estimate of the mutual information I(X; Y), in nats.

    Kraskov, Stögbauer & Grassberger, "Estimating mutual information", Phys. Rev. E 69, 066138
    (2004), algorithms 1 and 2, with the max-norm in each space, exactly as in the paper. Row i
    of ``x`` is paired with row i of ``y``; for N pairs, with :math:`\|\cdot\|` the max-norm and the
    joint distance :math:`\max(\|x_i - x_j\|, \|y_i - y_j\|)`:

    * ``variant=1`` (algorithm 1): :math:`\epsilon_i` is the joint distance from row i to
      its k-th nearest other row, :math:`n_x(i) = \#\{j \ne i : \|x_i - x_j\| < \epsilon_i\}`
      (strict), :math:`n_y(i)` likewise, and

      .. math:: I^{(1)} = \psi(k) + \psi(N) - \langle \psi(n_x + 1) + \psi(n_y + 1) \rangle

    * ``variant=2`` (algorithm 2): :math:`\epsilon_x(i)/2` and :math:`\epsilon_y(i)/2` are the
      largest marginal distances from row i to its k joint nearest neighbours,
      :math:`n_x(i) = \#\{j \ne i : \|x_i - x_j\| \le \epsilon_x(i)/2\}` (non-strict), :math:`n_y(i)`
      likewise, and

      .. math:: I^{(2)} = \psi(k) - 1/k + \psi(N) - \langle \psi(n_x) + \psi(n_y) \rangle

    :math:`\psi` is the digamma function and :math:`\langle\cdot\rangle` the mean over the N rows.
    Every distance is computed as :math:`\max_c \mathrm{fl}(|a_c - b_c|)` in the computation
    precision, the same numbers in the search and in the counts, so the strict and non-strict
    comparisons are exact. When several rows tie at the k-th joint distance, the lower row index
    is the nearer (this decides the neighbour set of variant 2; variant 1 depends only on the
    distance).

    No noise is added. The estimator assumes continuous data: with discrete-valued data (integer
    codes, quantised features, repeated rows) many distances tie exactly, :math:`\epsilon_i` can
    be 0, and the strict/non-strict counts then depend on the ties rather than on the density,
    which biases the estimate (scikit-learn hides this by silently adding noise of about 1e-10
    times the data's scale). Add your own jitter, e.g. ``x + 1e-10 * x.std() * torch.randn_like(x)``, so that the
    randomness is yours, visible and seeded.

    The estimate is piecewise constant in the data (it depends on it only through neighbour
    counts), so it has no useful gradient: the result does **not** require grad, even when
    ``x`` or ``y`` do. It is a constant for autograd (no gradient reaches ``x`` or ``y``, and
    ``backward()`` on it alone raises); do not use it as a training loss.

    Args:
        x: (N, dx) or batched (B, N, dx) tensor; float32 or float64 (float16/bfloat16 are
            computed in float32).
        y: (N, dy) or (B, N, dy), paired with ``x`` row by row: same N (and B), same dtype and
            device.
        k: number of joint neighbours, an int with k < N (3 is scikit-learn's default).
        variant: 1 or 2, the paper's algorithm.
        lengths: batched inputs only: optional (B,) int64 tensor; set b is its first
            ``lengths[b]`` rows (k < lengths[b] <= N), the rest is ignored.
        backend: ``"auto"`` (the fastest available for the inputs' device), ``"cpu"``,
            ``"cuda"``, ``"triton"`` or ``"reference"`` (dense torch, O(N^2) memory).

    Returns:
        A 0-dim tensor (2-D inputs) or a (B,) tensor (batched), in nats: float32 for half inputs,
        else the inputs' dtype. NaN for a set holding a NaN or inf.
    """
    _check_pair(x, y)
    k = check_k(k)
    variant = _check_variant(variant)
    rows = _check_lengths(lengths, x, k)
    impl = _resolve_backend(backend, x)
    x, y = x.detach(), y.detach()
    if impl == "cpu":
        return torch.ops.eae_kernels.ksg_mutual_information(x, y, k, variant, lengths)

    compute = accumulation_dtype(x.dtype)
    xb = (x if x.dim() == 3 else x.unsqueeze(0)).to(compute)
    yb = (y if y.dim() == 3 else y.unsqueeze(0)).to(compute)
    knn, range_count = _composed_kernels(impl)
    # One set after the other; a batched search would run pass 1 for all sets in one launch.
    out = torch.stack(
        [_ksg_one_set(xb[b, :m], yb[b, :m], k, variant, knn, range_count) for b, m in enumerate(rows)]
    ).to(compute)
    return out if x.dim() == 3 else out.squeeze(0)


def _ksg_one_set(x, y, k, variant, knn, range_count) -> torch.Tensor:
    """The KSG estimate of one set from a k-NN op (z, k, p) -> (dist, idx) and a range-count
    op (z, radius, inclusive) -> counts; float64 0-dim."""
    n = x.shape[0]
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return torch.full((), math.nan, dtype=torch.float64, device=x.device)
    dist, idx = knn(torch.cat([x, y], dim=1), k, math.inf)
    if variant == 1:
        rx = ry = dist[:, k - 1].to(x.dtype)
    else:  # largest marginal distance to the k joint neighbours: O(N k d)
        rx = (x[idx] - x[:, None, :]).abs().amax(dim=(1, 2))
        ry = (y[idx] - y[:, None, :]).abs().amax(dim=(1, 2))
    shift = 1 if variant == 1 else 0
    nx = range_count(x, rx, variant == 2).to(torch.float64) + shift
    ny = range_count(y, ry, variant == 2).to(torch.float64) + shift
    mean = (torch.special.digamma(nx) + torch.special.digamma(ny)).mean()
    mi = digamma_int(k) + digamma_int(n) - mean
    return mi - 1.0 / k if variant == 2 else mi


def _composed_kernels(impl: str):
    if impl == "cuda":
        return torch.ops.eae_kernels.knn, torch.ops.eae_kernels.ksg_range_count
    if impl == "triton":
        from . import triton_backend, triton_ksg

        return triton_backend.knn_op(), triton_ksg.range_count
    return _dense_knn_linf, _dense_range_count


def _dense_linf(z: torch.Tensor) -> torch.Tensor:
    return (z[:, None, :] - z[None, :, :]).abs().amax(dim=2)


def _dense_knn_linf(z: torch.Tensor, k: int, p: float):
    """Reference pass 1: the full max-norm distance matrix, stable sort (ties to the lower index).
    The row itself is excluded as NaN, which sorts after everything, +inf included (a distance
    overflows to inf for coordinates near the largest float)."""
    assert p == math.inf
    dist = _dense_linf(z)
    dist.fill_diagonal_(math.nan)
    dist, idx = torch.sort(dist, dim=1, stable=True)
    return dist[:, :k], idx[:, :k]


def _dense_range_count(z: torch.Tensor, radius: torch.Tensor, inclusive: bool) -> torch.Tensor:
    dist = _dense_linf(z)
    within = dist <= radius[:, None] if inclusive else dist < radius[:, None]
    within.fill_diagonal_(False)
    return within.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Gaussian closed form
# ---------------------------------------------------------------------------------------------


def gaussian_mutual_information(cov: torch.Tensor, dx: int) -> torch.Tensor:
    r"""Mutual information, in nats, between the first ``dx`` and the remaining coordinates of a
    Gaussian vector with covariance ``cov``:

    .. math:: I(X; Y) = -\tfrac12 \log \frac{\det \Sigma}{\det \Sigma_{xx} \, \det \Sigma_{yy}}

    with :math:`\Sigma_{xx}` = ``cov[:dx, :dx]`` and :math:`\Sigma_{yy}` = ``cov[dx:, dx:]``. It
    depends only on the correlation structure (rescaling coordinates changes nothing); for one
    pair of coordinates with correlation :math:`\rho` it is :math:`-\tfrac12 \log(1 - \rho^2)`, and
    for ``d`` independent such pairs ``d`` times that.

    Args:
        cov: (D, D) symmetric positive-definite covariance (or a batch (..., D, D)), floating.
        dx: the number of coordinates of X, 1 <= dx < D.

    Returns:
        A tensor of shape ``cov.shape[:-2]`` in ``cov``'s dtype (computed in float64).
    """
    if not isinstance(cov, torch.Tensor):
        raise TypeError(f"cov must be a torch.Tensor of shape (D, D); got {type(cov).__name__}")
    if not cov.dtype.is_floating_point:
        raise TypeError(f"cov must have a floating dtype; got {cov.dtype}")
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must be a square matrix (D, D) or a batch of them; got shape {tuple(cov.shape)}")
    if isinstance(dx, bool) or not isinstance(dx, numbers.Integral) or not 1 <= dx < cov.shape[-1]:
        raise ValueError(f"dx must be an int with 1 <= dx < D = {cov.shape[-1]}; got {dx!r}")
    c = cov.to(torch.float64)

    def logdet(m):
        sign, value = torch.linalg.slogdet(m)
        if bool((sign <= 0).any()):
            raise ValueError("cov must be positive definite (a determinant is <= 0)")
        return value

    mi = 0.5 * (logdet(c[..., :dx, :dx]) + logdet(c[..., dx:, dx:]) - logdet(c))
    return mi.to(cov.dtype)


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels of the compiled ops, for torch.compile and opcheck
# ---------------------------------------------------------------------------------------------


def _ksg_mutual_information_fake(x, y, k, variant, lengths=None, path=0):
    return x.new_empty(x.shape[:-2], dtype=accumulation_dtype(x.dtype))


def _ksg_range_count_fake(z, radius, inclusive, path=0):
    return z.new_empty((z.shape[0],), dtype=torch.int64)


if _extension.available():
    torch.library.register_fake("eae_kernels::ksg_mutual_information")(_ksg_mutual_information_fake)
    torch.library.register_fake("eae_kernels::ksg_range_count")(_ksg_range_count_fake)
