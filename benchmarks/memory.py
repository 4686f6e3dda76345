"""Peak *extra* memory of one call: the most it holds at once above what was in use before.

CPU: C++ allocations (our kernel, KeOps, faiss, ATen) are invisible to Python's tracers, so the
process's resident set is measured instead. Linux keeps its high-water mark in VmHWM
(/proc/self/status) and resets it to the current resident size on ``echo 5 > /proc/self/clear_refs``.
Before the call, freed heap memory is handed back to the kernel (glibc ``malloc_trim``) so that
reusing it during the call shows up as new resident pages instead of hiding in the baseline.
The figure includes the call's outputs and gradient (the memory a training step really needs).

GPU: torch.cuda.max_memory_allocated after reset_peak_memory_stats, relative to the memory
allocated before the call. Libraries that allocate outside torch's allocator (KeOps, faiss) are
only partly seen there; their rows say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Callable, Optional

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def cpu_unsupported_reason() -> Optional[str]:
    """None when the resident high-water mark can be reset and read here, else why not."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        _status_kib("VmHWM")
    except (OSError, KeyError) as exc:
        return f"cannot reset/read the resident high-water mark ({exc}); Linux only"
    return None


def cpu_peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak resident memory during ``fn()`` above the resident memory just before it, in bytes."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    before = _status_kib("VmRSS")
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")  # VmHWM := VmRSS
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def cuda_peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated through torch during ``fn()`` above what was allocated before."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before)


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    return cuda_peak_extra_bytes(fn) if device.type == "cuda" else cpu_peak_extra_bytes(fn)


def available_bytes(device: torch.device) -> int:
    """Memory that a case may use now: MemAvailable on a CPU, free device memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the errors an allocation failure raises (torch CPU/GPU, faiss, KeOps)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
