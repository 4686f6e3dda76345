"""Shared test settings: which (device, backend) pairs the suite runs, and input builders.

The CPU backend is required: without the compiled extension the suite fails (set
EAE_KERNELS_ALLOW_NO_EXTENSION=1 to test a fallback-only install). GPU backends run when a CUDA
device is present and are skipped otherwise.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import eae_kernels
from eae_kernels import backends

torch.set_num_threads(min(2, torch.get_num_threads()))

P_VALUES = (1.0, 2.0, math.inf)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def fused_backends() -> list[tuple[str, str]]:
    """(device, backend) pairs of the fused kernels (backends.AUTO_ORDER), GPU ones only when a
    GPU is present."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(device, backend) for device in devices for backend in backends.AUTO_ORDER[device]]


def require_backend(device: str, backend: str) -> None:
    """Skip a GPU backend this machine cannot run; never skip the CPU one."""
    reason = backends.why_unavailable(backend, "kl_entropy", torch.device(device))
    if reason is None:
        return
    if backend == "cpu" and os.environ.get("EAE_KERNELS_ALLOW_NO_EXTENSION") != "1":
        pytest.fail(f"the CPU extension must be available for the tests: {reason}")
    pytest.skip(f"backend {backend!r} unavailable: {reason}")


@pytest.fixture(params=fused_backends(), ids=lambda pair: f"{pair[0]}-{pair[1]}")
def device_backend(request):
    device, backend = request.param
    require_backend(device, backend)
    return device, backend


def random_rows(n: int, d: int, *, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


def integer_rows(n: int, d: int, *, seed: int = 0, low: int = -2, high: int = 3) -> torch.Tensor:
    """Small integers: many exact ties and duplicates, every distance exact in any float type."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, d), generator=g).to(torch.float64)


@pytest.fixture(autouse=True)
def _reset_cpu_isa():
    """Tests that force a CPU instruction set must not leak it into others."""
    ext = eae_kernels._extension._C
    before = ext.cpu_isa() if ext is not None else None
    yield
    if ext is not None:
        ext.set_cpu_isa(before)
