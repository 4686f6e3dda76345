"""Is each timed result right? Every method's output is compared with the reference's on the same
input (float32 both; the reference is ``eae_kernels.reference``, torch.cdist + topk + autograd).

- KL methods: H to a relative 1e-5, and the gradient row by row: a row is *off* when its error
  exceeds 1e-3 of max(its norm, the RMS row norm). Up to 3 off rows pass, the footprint of one
  near-tie (two neighbours within float32 rounding, ordered differently by two exact methods:
  the row, its old and its new neighbour); random Gaussian inputs almost never have one.
- Forward-only methods (faiss): every row's k-th neighbour distance to a relative 1e-3
  (faiss computes ||a||^2 + ||b||^2 - 2<a, b> in float32, which loses digits on close rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

H_RTOL = 1e-5
GRAD_ROW_RTOL = 1e-3
MAX_OFF_ROWS = 3
DIST_RTOL = 1e-3


@dataclass
class Check:
    ok: bool
    detail: str  # the measured errors, one line

    def as_dict(self) -> dict:
        return {"ok": self.ok, "detail": self.detail}


def check_kl(h: torch.Tensor, grad: torch.Tensor | None, h_ref: torch.Tensor, grad_ref: torch.Tensor | None) -> Check:
    """H (and the gradient, when both are given) against the reference's."""
    h, h_ref = float(torch.as_tensor(h).detach()), float(torch.as_tensor(h_ref).detach())
    h_err = abs(h - h_ref) / max(1.0, abs(h_ref))
    ok = math.isfinite(h) and h_err <= H_RTOL
    detail = f"H rel err {h_err:.1e}"
    if grad is not None and grad_ref is not None:
        grad, grad_ref = grad.detach().double().cpu(), grad_ref.detach().double().cpu()
        row_err = (grad - grad_ref).norm(dim=1)
        row_norm = grad_ref.norm(dim=1)
        rms = float(grad_ref.norm()) / math.sqrt(grad_ref.shape[0])
        off_rows = int((row_err > GRAD_ROW_RTOL * row_norm.clamp_min(rms)).sum())
        worst = float(row_err.max()) / max(rms, 1e-300)
        ok = ok and bool(torch.isfinite(grad).all()) and off_rows <= MAX_OFF_ROWS
        detail += f", grad max row err {worst:.1e} of RMS, {off_rows} rows off"
    return Check(ok, detail)


def check_distances(dist: torch.Tensor, dist_ref: torch.Tensor) -> Check:
    """(N,) k-th neighbour distances against the reference's."""
    dist, dist_ref = dist.detach().double().cpu(), dist_ref.detach().double().cpu()
    rel = (dist - dist_ref).abs() / dist_ref.abs().clamp_min(1e-12)
    worst = float(rel.max())
    ok = bool(torch.isfinite(dist).all()) and worst <= DIST_RTOL
    return Check(ok, f"k-th distance max rel err {worst:.1e}")


def reference_kth_distances(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance of each row to its k-th nearest other row, by the reference's method
    (torch.cdist, the diagonal excluded, topk); about 2 N^2 floats of memory."""
    dist = torch.cdist(z, z)
    dist.fill_diagonal_(math.inf)
    return dist.topk(k, dim=1, largest=False).values[:, k - 1]
