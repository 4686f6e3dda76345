"""The naive baseline: ``torch.cdist`` + ``topk`` + ``log``, differentiated by autograd.

This is what a user would write without this package. It is kept as the ground truth of the
test suite and as the baseline of the benchmarks; it builds the full N x N distance matrix, so
its memory is O(N^2) (about 17 GB of autograd state at N = 65536).

It computes exactly what the fused kernels compute (see ``eae_kernels.kl_entropy``):

    H(z) = psi(N) - psi(k) + log V(d, p) + (d / N) * sum_i 0.5 * log(r_i^2 + eps^2)

where r_i is the p-norm distance from row i to its k-th nearest other row, ties broken by the
lower index.
"""

from __future__ import annotations

import math

import torch

from . import _constants
from ._validate import (
    DEFAULT_EPS,
    accumulation_dtype,
    check_eps,
    check_k,
    check_p,
    check_pair,
    check_set_sizes,
    check_sets,
    check_z,
)

__all__ = [
    "kl_entropy",
    "kl_cross_entropy",
    "kl_divergence",
    "koleo_loss",
    "knn_distances",
    "log_unit_ball_volume",
    "kl_constant",
    "estimate_constant",
]


def log_unit_ball_volume(d: int, p: float) -> float:
    """log of the volume of the unit p-ball in R^d: d log(2 Gamma(1 + 1/p)) - lgamma(1 + d/p)."""
    return _constants.log_unit_ball_volume(d, check_p(p))


def kl_constant(n: int, d: int, k: int, p: float) -> float:
    """The z-independent part of the entropy of n rows: psi(N) - psi(k) + log V(d, p)."""
    return _constants.kl_constant(n, d, k, check_p(p))


def estimate_constant(candidates: int, d: int, k: int, p: float) -> float:
    """psi(C + 1) - psi(k) + log V(d, p) for C candidate rows (N - 1 self, N cross)."""
    return _constants.estimate_constant(candidates, d, k, check_p(p))


def _distances(x: torch.Tensor, y: torch.Tensor, p: float, exact: bool, exclude_offset) -> torch.Tensor:
    """(m, n) p-norm distances from the rows of x to those of y; with ``exclude_offset`` (the
    self case) +inf at (i, i + exclude_offset), so that a row is never its own neighbour.

    ``exact=False`` is torch.cdist's default, which for p=2 and more than 25 rows uses the
    matrix-product form ||a||^2 + ||b||^2 - 2<a, b> and loses the precision of close rows;
    ``exact=True`` sums squared differences (slower; the test suite's ground truth)."""
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    dist = torch.cdist(x, y, p=p, compute_mode=mode)
    if exclude_offset is not None and x.shape[0] > 0:
        rows = torch.arange(x.shape[0], device=x.device)
        mask = torch.zeros_like(dist, dtype=torch.bool)
        mask[rows, rows + exclude_offset] = True
        dist = dist.masked_fill(mask, math.inf)
    return dist


def _distance_matrix(z: torch.Tensor, p: float, exact: bool) -> torch.Tensor:
    """N x N p-norm distances with +inf on the diagonal (a row is never its own neighbour)."""
    return _distances(z, z, p, exact, 0)


def _kth_neighbour(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Index of the k-th nearest row, ties broken by the lower index.

    ``topk`` leaves the order of equal values unspecified, so rows whose k-th distance is tied
    are re-ranked with a stable sort (rare in practice, exact when it happens).
    """
    dist = dist.detach()
    values, index = torch.topk(dist, k, dim=1, largest=False, sorted=True)
    kth_value = values[:, k - 1 : k]
    tied_rows = ((dist == kth_value).sum(dim=1) > 1).nonzero().flatten()
    nbr = index[:, k - 1].clone()
    if tied_rows.numel() > 0:
        order = torch.sort(dist[tied_rows], dim=1, stable=True).indices
        nbr[tied_rows] = order[:, k - 1]
    return nbr


def _kth_distance(x, y, k: int, p: float, exact: bool, exclude_offset=None) -> torch.Tensor:
    """(m,) distance from each row of x to its k-th nearest row of y (differentiable)."""
    dist = _distances(x, y, p, exact, exclude_offset)
    nbr = _kth_neighbour(dist, k)
    return dist.gather(1, nbr[:, None]).squeeze(1)


def _log_term(r: torch.Tensor, eps: float) -> torch.Tensor:
    return 0.5 * torch.log(r * r + eps * eps)


def _set_rows(x: torch.Tensor, lengths) -> list:
    """The valid rows of each set of a (B, M, d) batch."""
    sizes = lengths.tolist() if lengths is not None else [x.shape[1]] * x.shape[0]
    return [x[b, :n] for b, n in enumerate(sizes)]


def kl_entropy(
    z: torch.Tensor,
    k: int = 1,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    *,
    exact: bool = False,
    lengths: torch.Tensor | None = None,
    row_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Kozachenko–Leonenko entropy of the rows of ``z``, in nats, by the naive method.

    ``z`` (N, d) gives a 0-dim tensor; ``z`` (B, N, d) gives (B,), one entropy per set, with
    optional ``lengths`` (B,) (rows at or past ``lengths[b]`` are ignored). ``row_range=(begin,
    end)`` (one set) gives that range's share: ``[begin == 0 < end] (psi(N) - psi(k) + log V) +
    (d / N) sum_{begin <= i < end} 0.5 log(r_i^2 + eps^2)``, O((end - begin) N) memory; the shares
    of a partition of the rows sum to H.

    Half-precision inputs are computed in float32 (the result is float32, the gradient has the
    input's dtype). Differentiable through autograd. ``exact``: see ``_distances`` (the default
    is what a user would write; the tests use ``exact=True``).
    """
    k = check_k(k)
    p = check_p(p)
    eps = check_eps(eps)
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or lengths is not None:
        z, lengths = check_sets(z, lengths, name="z", lengths_name="lengths")
        check_set_sizes(k, lengths, z.shape[0], z.shape[1], self_name="z")
        return torch.stack([kl_entropy(zb, k, p, eps, exact=exact) for zb in _set_rows(z, lengths)])
    check_z(z, k)
    n, d = z.shape
    begin, end = (0, n) if row_range is None else row_range
    z = z.to(accumulation_dtype(z.dtype))
    r = _kth_distance(z[begin:end], z, k, p, exact, exclude_offset=begin)
    h = (d / n) * _log_term(r, eps).sum()
    return h + kl_constant(n, d, k, p) if begin == 0 < end else h


def kl_cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    *,
    exact: bool = False,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """kNN cross-entropy H(p_x, p_y) by the naive method: for x (M, d) and y (N, d),
    ``psi(N + 1) - psi(k) + log V + (d / M) sum_i 0.5 log(r_i^2 + eps^2)``, r_i the distance from
    x_i to its k-th nearest row of y. Batched (B, ., d) with lengths as ``kl_entropy``."""
    return _pair_estimate(x, y, k, p, eps, exact, lengths_x, lengths_y, divergence=False)


def kl_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    *,
    exact: bool = False,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """``kl_cross_entropy(x, y) - kl_entropy(x)`` with the same k, p, eps, by the naive method."""
    return _pair_estimate(x, y, k, p, eps, exact, lengths_x, lengths_y, divergence=True)


def _pair_estimate(x, y, k, p, eps, exact, lengths_x, lengths_y, divergence: bool) -> torch.Tensor:
    k = check_k(k)
    p = check_p(p)
    eps = check_eps(eps)
    batched = x.dim() == 3
    x, lengths_x = check_sets(x, lengths_x, name="x", lengths_name="lengths_x")
    check_sets(y, name="y")
    check_pair(x if batched else x[0], y)
    y, lengths_y = check_sets(y, lengths_y, name="y", lengths_name="lengths_y")
    check_set_sizes(k, lengths_x, x.shape[0], x.shape[1], self_name="x" if divergence else None,
                    lengths_y=lengths_y, rows_y=y.shape[1])
    acc = accumulation_dtype(x.dtype)
    values = []
    for xb, yb in zip(_set_rows(x.to(acc), lengths_x), _set_rows(y.to(acc), lengths_y)):
        (m, d), n = xb.shape, yb.shape[0]
        h = estimate_constant(n, d, k, p) + (d / m) * _log_term(_kth_distance(xb, yb, k, p, exact), eps).sum()
        if divergence:
            h = h - kl_entropy(xb, k, p, eps, exact=exact)
        values.append(h)
    out = torch.stack(values)
    return out if batched else out[0]


def _koleo_normalised(x: torch.Tensor, eps: float, exact: bool, lengths=None, row_range=None) -> torch.Tensor:
    """KoLeo of rows already L2-normalised: per set, ``-(1/N) sum_i log(r_i + eps)`` over rows i
    (of ``row_range`` if given, one set), r_i the distance to the nearest other row."""
    values = []
    for xb in _set_rows(x, lengths):
        n = xb.shape[0]
        begin, end = (0, n) if row_range is None else row_range
        r = _kth_distance(xb[begin:end], xb, 1, 2.0, exact, exclude_offset=begin)
        values.append(-torch.log(r + eps).sum() / n)
    return torch.stack(values)


def koleo_loss(
    x: torch.Tensor,
    eps: float = 1e-8,
    *,
    exact: bool = False,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The KoLeo loss of DINOv2 by the naive method: rows L2-normalised (``F.normalize(x, eps=eps)``),
    r_i the distance from row i to its nearest other row, ``-mean_i log(r_i + eps)``. (N, d) gives
    a 0-dim tensor, (B, N, d) with optional lengths gives (B,)."""
    eps = check_eps(eps)
    batched = x.dim() == 3
    x, lengths = check_sets(x, lengths, name="x", lengths_name="lengths")
    check_set_sizes(1, lengths, x.shape[0], x.shape[1], self_name="x")
    xn = torch.nn.functional.normalize(x.to(accumulation_dtype(x.dtype)), p=2.0, dim=-1, eps=eps)
    out = _koleo_normalised(xn, eps, exact, lengths)
    return out if batched else out[0]


def knn_distances(
    z: torch.Tensor,
    k: int,
    p: float = 2.0,
    *,
    y: torch.Tensor | None = None,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force k nearest rows: distances ascending and int64 indices, ties broken by the lower
    index (stable sort of the full distance matrix).

    ``z`` (N, d) alone: the k nearest *other* rows, (N, k). With ``y`` (N', d): the k nearest
    rows of y. Batched (B, M, d) with lengths: (B, M, k), padded query rows get distance 0 and
    index -1.
    """
    k = check_k(k)
    p = check_p(p)
    if z.dim() == 2 and y is None and lengths_x is None:
        check_z(z, k)
        z = z.to(accumulation_dtype(z.dtype))
        dist = _distance_matrix(z, p, exact)
        order = torch.sort(dist.detach(), dim=1, stable=True).indices[:, :k]
        return dist.gather(1, order), order
    batched = z.dim() == 3
    x, lengths_x = check_sets(z, lengths_x, name="x", lengths_name="lengths_x")
    acc = accumulation_dtype(x.dtype)
    if y is not None:
        check_sets(y, name="y")
        check_pair(z, y)
        y, lengths_y = check_sets(y, lengths_y, name="y", lengths_name="lengths_y")
        ys = _set_rows(y.to(acc), lengths_y)
    check_set_sizes(k, lengths_x, x.shape[0], x.shape[1], self_name=None if y is not None else "x",
                    lengths_y=lengths_y if y is not None else None,
                    rows_y=y.shape[1] if y is not None else None, allow_empty=True)
    dists, idxs = [], []
    for b, xb in enumerate(_set_rows(x.to(acc), lengths_x)):
        m = xb.shape[0]
        if m == 0:  # an empty query set: all padding
            dists.append(xb.new_zeros(x.shape[1], k))
            idxs.append(torch.full((x.shape[1], k), -1, dtype=torch.int64, device=x.device))
            continue
        dist = _distances(xb, ys[b] if y is not None else xb, p, exact, None if y is not None else 0)
        order = torch.sort(dist.detach(), dim=1, stable=True).indices[:, :k]
        pad = x.shape[1] - m
        dists.append(torch.nn.functional.pad(dist.gather(1, order), (0, 0, 0, pad)))
        idxs.append(torch.nn.functional.pad(order, (0, 0, 0, pad), value=-1))
    dist, idx = torch.stack(dists), torch.stack(idxs)
    return (dist, idx) if batched else (dist[0], idx[0])
