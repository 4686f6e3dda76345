"""What the benchmark compares: this package's backends and the baselines a user would pick instead.

Every method is a function ``run(z, k)`` on the same (N, d) float32 input:

- a *KL method* returns the Kozachenko-Leonenko entropy H (0-dim, differentiable with respect
  to ``z``), so it is timed forward and forward+backward;
- a *forward-only method* (faiss) returns the (N,) distances of every row to its k-th nearest
  other row, the neighbour search that H needs, with no gradient.

A method that cannot run here (package not installed, no GPU, no GPU build) is still listed, with
``unavailable`` saying why, so that the report shows it as a skipped row instead of leaving it out.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import eae_kernels
from eae_kernels import backends, reference

# Keys accepted by `python -m benchmarks.run --methods`, in the order rows are reported.
METHOD_KEYS = ("ours", "reference", "compile", "pykeops", "faiss")


@dataclass
class Method:
    key: str  # the --methods key: 'ours', 'reference', 'compile', 'pykeops' or 'faiss'
    name: str  # label in tables and plots
    run: Optional[Callable[[torch.Tensor, int], torch.Tensor]]  # None when unavailable
    unavailable: Optional[str] = None  # why it cannot run here
    is_ours: bool = False
    forward_only: bool = False  # returns k-th neighbour distances, no gradient
    memory_order: int = 1  # peak memory grows as N**memory_order (2: an N x N matrix)
    compiles: bool = False  # the first call with new shapes compiles code (timed separately)
    note: str = ""  # one line for the report: what exactly is measured


def ours(device: torch.device) -> list[Method]:
    """One method per fused backend of the device type (eae_kernels.backends.AUTO_ORDER): 'cpu'
    on a CPU; 'cuda' and 'triton' on a GPU."""
    methods = []
    for backend in backends.AUTO_ORDER.get(device.type, ()):
        reason = backends.why_unavailable(backend, "kl_entropy", device)

        def run(z, k, backend=backend):
            return eae_kernels.kl_entropy(z, k, backend=backend)

        methods.append(
            Method(
                "ours",
                f"eae-kernels ({backend})",
                None if reason else run,
                unavailable=reason,
                is_ours=True,
                note=f"eae_kernels.kl_entropy(z, k, backend={backend!r}): fused search + gradient, O(N d) memory",
            )
        )
    return methods


def reference_method() -> Method:
    return Method(
        "reference",
        "reference",
        reference.kl_entropy,
        memory_order=2,
        note="eae_kernels.reference.kl_entropy: torch.cdist + topk + log, autograd backward (N x N memory)",
    )


def compiled_reference() -> Method:
    """torch.compile of the reference, the 'just compile it' alternative. Shapes are dynamic after
    the first recompilation; the first call per new graph (compile time) is reported separately."""
    # The reference computes a Python float constant (digamma(...).item()): a graph break that
    # dynamo warns about on every compilation. It is expected; keep the progress output readable.
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    return Method(
        "compile",
        "torch.compile(reference)",
        torch.compile(reference.kl_entropy),
        memory_order=2,
        compiles=True,
        note="torch.compile(eae_kernels.reference.kl_entropy), default mode; compile time reported separately",
    )


def keops_kl_entropy(z: torch.Tensor, k: int, lazy_tensor, eps: float = eae_kernels.DEFAULT_EPS) -> torch.Tensor:
    """H by pykeops, the way KeOps itself recommends for a differentiable k-NN loss.

    KeOps cannot differentiate through its k-min reductions (``Kmin_argKmin`` raises
    NotImplementedError in backward and points to ``argKmin``), so the neighbour *indices* come
    from a KeOps ``argKmin`` (no N x N buffer) and the distances to them are recomputed in torch,
    which autograd differentiates: O(N k d) extra work. The row itself is among the k+1 nearest
    and is removed by index.
    """
    n, d = z.shape
    zd = z.detach()
    x_i, x_j = lazy_tensor(zd[:, None, :]), lazy_tensor(zd[None, :, :])
    candidates = ((x_i - x_j) ** 2).sum(-1).argKmin(k + 1, dim=1)  # (N, k+1) int64
    sq_dist = ((z[:, None, :] - z[candidates]) ** 2).sum(-1)  # (N, k+1), differentiable
    is_self = candidates == torch.arange(n, device=z.device)[:, None]
    sq_dist_k = sq_dist.masked_fill(is_self, math.inf).sort(dim=1).values[:, k - 1]
    log_r = 0.5 * torch.log(sq_dist_k + eps * eps)
    return reference.kl_constant(n, d, k, 2.0) + (d / n) * log_r.sum()


def keops_method(device: torch.device, cache_folder: Optional[str] = None) -> Method:
    """pykeops, if installed. ``cache_folder``: where KeOps compiles its formulas, given before
    pykeops is first imported (KeOps reads KEOPS_CACHE_FOLDER once, at import; its
    ``set_build_folder`` later on would leave stale entries in the default cache). An empty
    folder makes the reported first-call overhead KeOps' real compile time."""
    name = "pykeops"
    saved = os.environ.get("KEOPS_CACHE_FOLDER")
    if cache_folder is not None and "pykeops" not in sys.modules:
        os.environ["KEOPS_CACHE_FOLDER"] = cache_folder
    try:
        import pykeops as keops
        from pykeops.torch import LazyTensor
    except ImportError as exc:
        return Method("pykeops", name, None, unavailable=f"pykeops is not installed ({exc}); pip install '.[bench]'")
    finally:
        if saved is None:
            os.environ.pop("KEOPS_CACHE_FOLDER", None)
        else:
            os.environ["KEOPS_CACHE_FOLDER"] = saved
    keops.set_verbose(False)  # its "Generating code ..." lines would break the progress bar
    if device.type == "cuda" and not keops.config.gpu_available:
        return Method("pykeops", name, None, unavailable="this pykeops install found no usable CUDA (nvrtc)")
    return Method(
        "pykeops",
        name,
        lambda z, k: keops_kl_entropy(z, k, LazyTensor),
        compiles=True,
        note="pykeops LazyTensor argKmin(k+1) + KL formula in torch, autograd (KeOps compile time reported separately)",
    )


def _kth_from_candidates(sq_dist: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance to the k-th nearest other row from the k+1 nearest rows (squared distances
    and indices, the row itself among them): drop the row by index, take the k-th smallest."""
    rows = torch.arange(index.shape[0], device=index.device)[:, None]
    sq_dist = sq_dist.masked_fill(index == rows, math.inf)
    return sq_dist.sort(dim=1).values[:, k - 1].clamp_min(0).sqrt()


def faiss_method(device: torch.device) -> Method:
    try:
        import faiss
    except ImportError as exc:
        return Method(
            "faiss", "faiss IndexFlatL2", None, forward_only=True,
            unavailable=f"faiss is not installed ({exc}); pip install '.[bench]'",
        )
    if device.type == "cuda":
        name = "faiss GpuIndexFlatL2"
        if not hasattr(faiss, "StandardGpuResources"):
            return Method(
                "faiss", name, None, forward_only=True,
                unavailable="the installed faiss is the CPU build; pip install faiss-gpu-cu12 for the GPU index",
            )
        import faiss.contrib.torch_utils  # noqa: F401  (lets faiss take and return torch GPU tensors)

        resources = faiss.StandardGpuResources()

        def run(z, k):
            x = z.detach().float().contiguous()
            index = faiss.GpuIndexFlatL2(resources, x.shape[1])
            index.add(x)
            sq_dist, idx = index.search(x, k + 1)
            return _kth_from_candidates(sq_dist, idx, k)

    else:
        name = "faiss IndexFlatL2"

        def run(z, k):
            x = z.detach().float().contiguous().numpy()
            index = faiss.IndexFlatL2(x.shape[1])
            index.add(x)
            sq_dist, idx = index.search(x, k + 1)
            return _kth_from_candidates(torch.from_numpy(sq_dist), torch.from_numpy(idx), k)

    return Method(
        "faiss",
        name,
        run,
        forward_only=True,
        note=f"{name}: build the index, search the k+1 nearest rows, drop the row itself (forward only, no gradient)",
    )


def all_methods(device: torch.device, keys=METHOD_KEYS, keops_cache_folder: Optional[str] = None) -> list[Method]:
    """The methods named by ``keys`` for ``device``, unavailable ones included (with the reason)."""
    builders = {
        "ours": lambda: ours(device),
        "reference": lambda: [reference_method()],
        "compile": lambda: [compiled_reference()],
        "pykeops": lambda: [keops_method(device, keops_cache_folder)],
        "faiss": lambda: [faiss_method(device)],
    }
    methods = []
    for key in METHOD_KEYS:
        if key in keys:
            methods += builders[key]()
    return methods
