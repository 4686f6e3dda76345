"""eae-kernels: fused, differentiable kNN estimators (Kozachenko–Leonenko entropy, cross-entropy,
KL divergence, DINOv2's KoLeo loss) without an N x N buffer.

    from eae_kernels import kl_entropy, kl_divergence, koleo_loss, knn_distances, reference

    h = kl_entropy(z, k=1)            # 0-dim tensor, differentiable; O(N*d) memory
    h = kl_entropy(zs, lengths=n)     # (B,) one entropy per set of a (B, N, d) batch
    D = kl_divergence(x, y, k=1)      # D(p_x || p_y), differentiable in x and y
    loss = koleo_loss(features)       # DINOv2's KoLeo regulariser
    dist, idx = knn_distances(z, 5)   # (N, 5) ascending distances and int64 indices
"""

from . import reference
from ._extension import available as extension_available
from ._validate import DEFAULT_EPS
from .modules import KLDivergence, KLEntropy, KoLeoLoss
from .ops import kl_cross_entropy, kl_divergence, kl_entropy, knn_distances, koleo_loss

__version__ = "0.1.0"
__all__ = [
    "kl_entropy",
    "kl_cross_entropy",
    "kl_divergence",
    "koleo_loss",
    "knn_distances",
    "KLEntropy",
    "KLDivergence",
    "KoLeoLoss",
    "reference",
    "DEFAULT_EPS",
    "extension_available",
    "__version__",
]
