"""``KLEntropy``: the estimator as an ``nn.Module``, for loss definitions such as
``loss = mse - beta * KLEntropy(k=1)(z)``."""

from __future__ import annotations

import torch
from torch import nn

from ._validate import DEFAULT_EPS, check_backend, check_eps, check_k, check_p
from .ops import kl_entropy


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
