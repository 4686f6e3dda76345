"""Loads the compiled extension ``eae_kernels._C`` (which registers the ``torch.ops.eae_kernels``
ops) and remembers why, if it could not be loaded, so that error messages can say so."""

from __future__ import annotations

import warnings

try:
    from . import _C  # noqa: F401  (importing registers the ops)

    LOAD_ERROR: str | None = None
except (ImportError, OSError) as exc:  # not built, or built against another torch
    _C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    """True when the compiled CPU kernels (and CUDA ones, if built) can be used."""
    return _C is not None


def with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda)


def unavailable_reason() -> str:
    return (
        "the compiled extension eae_kernels._C could not be loaded "
        f"({LOAD_ERROR}); rebuild it with `pip install --no-build-isolation -e .` "
        "against the torch you run"
    )


_warned_fallback = False  # set False to have the next fallback warn again (tests)
_warned_ops: set = set()  # (device type, op) pairs already warned about


def warn_fallback_once(device, op: str = "kl_entropy") -> None:
    """backend='auto' found no fused kernel for ``op`` on ``device``: say once per (device type,
    op) that the slow reference implementation is used instead."""
    global _warned_fallback
    key = (getattr(device, "type", str(device)), op)
    if _warned_fallback and key in _warned_ops:
        return
    _warned_fallback = True
    _warned_ops.add(key)
    if _C is None:
        why = unavailable_reason()
    else:
        why = f"no fused backend implements {op} for {device} tensors"
    warnings.warn(
        f"eae_kernels: {why}. backend='auto' falls back to the O(N^2)-memory reference "
        "implementation (same results, much slower).",
        RuntimeWarning,
        stacklevel=4,
    )
