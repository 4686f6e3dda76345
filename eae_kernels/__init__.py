"""eae-kernels: a fused, differentiable Kozachenko–Leonenko entropy estimator.

    from eae_kernels import kl_entropy, knn_distances, KLEntropy, reference

    h = kl_entropy(z, k=1)          # 0-dim tensor, differentiable; O(N*d) memory
    dist, idx = knn_distances(z, 5)  # (N, 5) ascending distances and int64 indices
    warmup(z, k=1)                   # compile/autotune/self-check before capturing a CUDA graph
"""

from . import reference
from ._extension import available as extension_available
from ._validate import DEFAULT_EPS
from .ksg import gaussian_mutual_information, ksg_mutual_information
from .modules import KLEntropy
from .ops import kl_entropy, knn_distances

__version__ = "0.1.0"
__all__ = [
    "kl_entropy",
    "knn_distances",
    "KLEntropy",
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
