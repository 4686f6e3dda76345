"""The estimators as ``nn.Module`` s, for loss definitions such as
``loss = mse - beta * KLEntropy(k=1)(z)`` or ``loss = dino + 0.1 * KoLeoLoss()(cls_tokens)``."""

from __future__ import annotations

import torch
from torch import nn

from ._validate import DEFAULT_EPS, check_backend, check_eps, check_k, check_p
from .ops import kl_divergence, kl_entropy, koleo_loss


class KLEntropy(nn.Module):
    """Module form of :func:`eae_kernels.kl_entropy` (same arguments; no parameters)."""

    def __init__(
        self,
        k: int = 1,
        *,
        p: float = 2.0,
        eps: float = DEFAULT_EPS,
        backend: str = "auto",
        deterministic: bool = False,
        group=None,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.k = check_k(k)
        self.p = check_p(p)
        self.eps = check_eps(eps)
        self.backend = check_backend(backend)
        self.deterministic = bool(deterministic)
        self.group = group
        self.distributed = bool(distributed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return kl_entropy(
            z,
            self.k,
            p=self.p,
            eps=self.eps,
            backend=self.backend,
            deterministic=self.deterministic,
            group=self.group,
            distributed=self.distributed,
        )

    def extra_repr(self) -> str:
        extra = ", distributed=True" if (self.distributed or self.group is not None) else ""
        return f"k={self.k}, p={self.p}, eps={self.eps}, backend={self.backend!r}{extra}"


class KLDivergence(nn.Module):
    """Module form of :func:`eae_kernels.kl_divergence`: ``KLDivergence(k)(x, y)`` estimates
    D(p_x || p_y) from samples x and y (same arguments; no parameters)."""

    def __init__(self, k: int = 1, *, p: float = 2.0, eps: float = DEFAULT_EPS, backend: str = "auto") -> None:
        super().__init__()
        self.k = check_k(k)
        self.p = check_p(p)
        self.eps = check_eps(eps)
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor, y: torch.Tensor, lengths_x=None, lengths_y=None) -> torch.Tensor:
        return kl_divergence(
            x, y, self.k, p=self.p, eps=self.eps, lengths_x=lengths_x, lengths_y=lengths_y, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"k={self.k}, p={self.p}, eps={self.eps}, backend={self.backend!r}"


class KoLeoLoss(nn.Module):
    """Module form of :func:`eae_kernels.koleo_loss`, a drop-in for DINOv2's ``KoLeoLoss``:
    ``KoLeoLoss()(x)`` is ``-mean log(r_i + eps)`` of the L2-normalised rows of x. ``group``:
    the loss of the global batch across the ranks of a process group."""

    def __init__(self, *, eps: float = 1e-8, group=None, backend: str = "auto") -> None:
        super().__init__()
        self.eps = check_eps(eps)
        self.group = group
        self.backend = check_backend(backend)

    def forward(self, x: torch.Tensor, lengths=None) -> torch.Tensor:
        return koleo_loss(x, eps=self.eps, group=self.group, lengths=lengths, backend=self.backend)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, backend={self.backend!r}" + (", distributed=True" if self.group is not None else "")
