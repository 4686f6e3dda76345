"""The backend table: which implementations exist, where they run, why one cannot, and which ops
each implements. Adding a backend or an op is one entry here.

    BACKENDS["cpu"].ops          # the op names the compiled CPU kernels implement
    resolve("auto", "kl_divergence", x)   # the backend that will run this op on x's device
    op_for("cuda", "kl_entropy")         # the callable of one backend's op

The ops (their schemas are in csrc/bindings.cpp; the reference's callables in reference_ops.py
have the same signatures and outputs):

    kl_entropy, knn                  one (N, d) set (the original ops; row ranges for the
                                     distributed mode)
    kl_entropy_sets, knn_sets,       batches of sets (B, M, d) with optional lengths, a
    kl_cross_entropy, kl_divergence, separate reference set y for the cross ops
    koleo
    ksg_mutual_information           KSG mutual information (ksg.py): one compiled op on the CPU;
                                     on cuda and triton composed from that backend's knn and
                                     range-count kernels

``backend="auto"`` takes, for the tensor's device type, the first backend of AUTO_ORDER that
implements the op, can run here and passes its health check (``healthy``); otherwise the
reference (warning once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import _extension
from ._validate import check_backend

SINGLE_SET_OPS = ("kl_entropy", "knn")
SET_OPS = ("kl_entropy_sets", "knn_sets", "kl_cross_entropy", "kl_divergence", "koleo")
KSG_OP = "ksg_mutual_information"
ALL_OPS = SINGLE_SET_OPS + SET_OPS + (KSG_OP,)


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # device types backend="auto" considers it for
    ops: tuple[str, ...]  # the ops it implements
    why_unavailable: Callable[[torch.device], Optional[str]]  # None when it can run there
    load_op: Callable[[str], Callable]  # op name -> the callable (C++ op schema)


def _compiled_reason(device: torch.device, device_type: str) -> Optional[str]:
    if device.type != device_type:
        return f"it needs a {device_type.upper()} tensor; the input is on {device}"
    if not _extension.available():
        return _extension.unavailable_reason()
    if device_type == "cuda" and not _extension.with_cuda():
        return (
            "eae_kernels._C was built without its CUDA kernels (they are built when torch is a "
            "CUDA build and nvcc is found at install time)"
        )
    return None


def _compiled_op(name: str) -> Callable:
    return getattr(torch.ops.eae_kernels, name).default


def _triton_reason(device: torch.device) -> Optional[str]:
    from . import triton_backend

    return triton_backend.unavailable_reason(torch.empty(0, device=device))


def _triton_op(name: str) -> Callable:
    from . import triton_backend

    if name in triton_backend.SET_OPS:
        return triton_backend.set_op(name)
    return {"kl_entropy": triton_backend.kl_entropy_op, "knn": triton_backend.knn_op}[name]()


def _reference_op(name: str) -> Callable:
    from . import reference_ops

    return getattr(reference_ops, name)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("cpu", ("cpu",), ALL_OPS, lambda dev: _compiled_reason(dev, "cpu"), _compiled_op),
        Backend("cuda", ("cuda",), ALL_OPS, lambda dev: _compiled_reason(dev, "cuda"), _compiled_op),
        Backend("triton", ("cuda",), ALL_OPS, _triton_reason, _triton_op),
        Backend("reference", (), ALL_OPS, lambda dev: None, _reference_op),
    )
}

# backend="auto": the candidates in order of preference for each device type.
AUTO_ORDER = {
    device: tuple(b.name for b in BACKENDS.values() if device in b.devices) for device in ("cpu", "cuda")
}


def healthy(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` passed its health check on ``device``: the quick self-check of GPU
    kernels not yet verified on hardware (eae_kernels/selfcheck.py), run once per process and
    device; a failing backend is skipped by backend="auto"."""
    from . import selfcheck  # imported on first use: it imports the ops

    return selfcheck.backend_healthy(backend, device)


def why_unavailable(backend: str, op: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run ``op`` on ``device``, or None when it can."""
    entry = BACKENDS[backend]
    if op not in entry.ops:
        return (
            f"it does not implement {op} (it implements {', '.join(entry.ops)}); backend='auto' "
            "or 'reference' runs it"
        )
    return entry.why_unavailable(device)


def resolve(backend: str, op: str, tensor: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``tensor``'s device. An explicitly requested backend that
    cannot raises RuntimeError with the reason; 'auto' takes the first usable one of AUTO_ORDER
    and otherwise falls back to the reference (warning once)."""
    backend = check_backend(backend)
    device = tensor.device
    if backend != "auto":
        reason = why_unavailable(backend, op, device)
        if reason is not None:
            raise RuntimeError(f"backend={backend!r} is unavailable: {reason}")
        return backend
    for candidate in AUTO_ORDER.get(device.type, ()):
        if why_unavailable(candidate, op, device) is None and healthy(candidate, device):
            return candidate
    _extension.warn_fallback_once(device, op)
    return "reference"


def op_for(backend: str, op: str) -> Callable:
    """The callable of ``op`` on ``backend`` (resolved with ``resolve`` first)."""
    return BACKENDS[backend].load_op(op)
