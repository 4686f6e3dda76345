"""eae-kernels: fused, differentiable kNN estimators (Kozachenko–Leonenko entropy, cross-entropy,
KL divergence, DINOv2's KoLeo loss) without an N x N buffer.

    from eae_kernels import kl_entropy, kl_divergence, koleo_loss, knn_distances, reference

    h = kl_entropy(z, k=1)            # 0-dim tensor, differentiable; O(N*d) memory
    h = kl_entropy(zs, lengths=n)     # (B,) one entropy per set of a (B, N, d) batch
    D = kl_divergence(x, y, k=1)      # D(p_x || p_y), differentiable in x and y
    loss = koleo_loss(features)       # DINOv2's KoLeo regulariser
    mi = ksg_mutual_information(x, y, k=3)  # KSG mutual information, nats (no gradient)
    dist, idx = knn_distances(z, 5)   # (N, 5) ascending distances and int64 indices
    warmup(z, k=1)                    # compile/autotune/self-check before capturing a CUDA graph
"""

from . import reference
from ._extension import available as extension_available
from ._validate import DEFAULT_EPS
from .ksg import gaussian_mutual_information, ksg_mutual_information
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
    "ksg_mutual_information",
    "gaussian_mutual_information",
    "reference",
    "DEFAULT_EPS",
    "extension_available",
    "warmup",
    "__version__",
]


def __getattr__(name):
    # warmup lives in selfcheck.py, imported on first use: `python -m eae_kernels.selfcheck` must
    # not find that module already imported by the package.
    if name == "warmup":
        from .selfcheck import warmup

        return warmup
    raise AttributeError(f"module 'eae_kernels' has no attribute {name!r}")
