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

from ._validate import DEFAULT_EPS, accumulation_dtype, check_eps, check_k, check_p, check_z

__all__ = ["kl_entropy", "knn_distances", "log_unit_ball_volume", "kl_constant"]


def log_unit_ball_volume(d: int, p: float) -> float:
    """log of the volume of the unit p-ball in R^d: d log(2 Gamma(1 + 1/p)) - lgamma(1 + d/p)."""
    p = check_p(p)
    if p == math.inf:
        return d * math.log(2.0)
    return d * math.log(2.0 * math.gamma(1.0 + 1.0 / p)) - math.lgamma(1.0 + d / p)


def _digamma(x: int) -> float:
    return torch.special.digamma(torch.tensor(float(x), dtype=torch.float64)).item()


def kl_constant(n: int, d: int, k: int, p: float) -> float:
    """The z-independent part of the estimate: psi(N) - psi(k) + log V(d, p)."""
    return _digamma(n) - _digamma(k) + log_unit_ball_volume(d, p)


def _distance_matrix(z: torch.Tensor, p: float, exact: bool) -> torch.Tensor:
    """N x N p-norm distances with +inf on the diagonal (a row is never its own neighbour).

    ``exact=False`` is torch.cdist's default, which for p=2 and N > 25 uses the matrix-product
    form ||a||^2 + ||b||^2 - 2<a, b> and loses the precision of close rows; ``exact=True`` sums
    squared differences (slower; the test suite's ground truth)."""
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    dist = torch.cdist(z, z, p=p, compute_mode=mode)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return dist.masked_fill(eye, math.inf)


def _kth_neighbour(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Index of the k-th nearest other row, ties broken by the lower index.

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


def kl_entropy(
    z: torch.Tensor, k: int = 1, p: float = 2.0, eps: float = DEFAULT_EPS, *, exact: bool = False
) -> torch.Tensor:
    """Kozachenko–Leonenko entropy of the rows of ``z`` (N, d), in nats, by the naive method.

    Half-precision inputs are computed in float32 (the result is float32, the gradient has the
    input's dtype). Differentiable through autograd. ``exact``: see ``_distance_matrix`` (the
    default is what a user would write; the tests use ``exact=True``).
    """
    k = check_k(k)
    check_z(z, k)
    p = check_p(p)
    eps = check_eps(eps)
    n, d = z.shape
    z = z.to(accumulation_dtype(z.dtype))
    dist = _distance_matrix(z, p, exact)
    nbr = _kth_neighbour(dist, k)
    r = dist.gather(1, nbr[:, None]).squeeze(1)
    log_r = 0.5 * torch.log(r * r + eps * eps)
    return kl_constant(n, d, k, p) + (d / n) * log_r.sum()


def knn_distances(
    z: torch.Tensor, k: int, p: float = 2.0, *, exact: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force k nearest other rows: (N, k) distances ascending and (N, k) int64 indices.

    Ties are broken by the lower index (stable sort of the full distance matrix).
    """
    k = check_k(k)
    check_z(z, k)
    p = check_p(p)
    z = z.to(accumulation_dtype(z.dtype))
    dist = _distance_matrix(z, p, exact)
    order = torch.sort(dist.detach(), dim=1, stable=True).indices[:, :k]
    return dist.gather(1, order), order
