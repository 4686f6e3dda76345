"""Shared test settings: which (device, backend) pairs the suite runs, input builders, and the
model package's test helpers (tiny data sets and configs).

The CPU backend is required: without the compiled extension the suite fails (set
EAE_KERNELS_ALLOW_NO_EXTENSION=1 to test a fallback-only install). GPU backends run when a CUDA
device is present and are skipped otherwise.

Tiers (markers registered in pyproject.toml): ``python -m pytest -m "not slow" tests`` is the
quick run; ``python -m pytest tests`` (CI) runs everything.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
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


def clustered(n: int, d: int, clusters: int, spread: float, *, seed: int) -> torch.Tensor:
    """float32 rows around `clusters` random centres, each coordinate `spread` from its centre."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(clusters, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, clusters, (n,), generator=g)
    return (centres[labels] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)).float()


def adversarial_rows(n: int, d: int):
    """(name, float32 rows) pairs built to widen a certified search's candidate band or to break a
    careless bound: about n rows of dimension d (some cases scale both)."""
    z = random_rows(n, d, seed=11, dtype=torch.float32)
    half = random_rows(n // 2, d, seed=12, dtype=torch.float32)
    yield "all rows equal", torch.full((n // 2, 16), 0.375)
    yield "pairs of duplicates", torch.cat([half, half])[torch.randperm(2 * (n // 2), generator=torch.Generator().manual_seed(1))]
    yield "near-duplicates", torch.cat([half, half + 1e-6 * random_rows(n // 2, d, seed=2, dtype=torch.float32)])
    yield "z + 1e4", z + 1e4
    yield "z * 1e4 + 1e7", z * 1e4 + 1e7
    yield "near the float max", z * 1e18
    yield "large enough to overflow keys", z * 3e18
    yield "tiny (subnormal differences)", z * 1e-41
    yield "tiny (underflowing squares)", z * 1e-22
    yield "d = 1", random_rows(3 * n, 1, seed=13, dtype=torch.float32)
    yield "d = 1 integers", integer_rows(n, 1, seed=14, low=-(n // 12), high=n // 12).float()
    yield "integer rows (exact ties)", integer_rows(n, 4, seed=15).float()
    yield "clusters, spread 1e-6", clustered(2 * n, d + 8, max(2, n // 60), 1e-6, seed=16)
    yield "clusters, spread 1e-3", clustered(2 * n, 2 * d + 16, max(2, n // 30), 1e-3, seed=17)
    yield "one far outlier", torch.cat([z, torch.full((1, d), 1e6)])
    yield "heavy tails", (random_rows(n + n // 3, 2 * d, seed=18) ** 5).float()
    yield "nan row", torch.cat([z[: n // 6 - 1], torch.full((1, d), float("nan"))])


@pytest.fixture(autouse=True)
def _reset_cpu_isa():
    """Tests that force a CPU instruction set must not leak it into others."""
    ext = eae_kernels._extension._C
    before = ext.cpu_isa() if ext is not None else None
    yield
    if ext is not None:
        ext.set_cpu_isa(before)


# ---------------------------------------------------------------------------------------------
# The model package (python/): tiny data sets, tiny configs, checkpoint comparison. Plain
# functions, imported by the test_python_* modules (``from conftest import ...``); they import the
# model package lazily, so that the kernel tests never load it.
# ---------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n: int = 12, split: str = "t10k", gz: bool = True, labels: bool = True,
                seed: int = 0) -> np.ndarray:
    """Random 28x28 'digits' in IDX form; returns the images."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    files = {f"{split}-images-idx3-ubyte": images}
    if labels:
        files[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, size=n, dtype=np.uint8)
    for name, array in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / name).write_bytes(idx_bytes(array))
    return images


def write_cifar(directory: Path, n: int = 12, name: str = "data_batch_1", seed: int = 0) -> np.ndarray:
    """A CIFAR-10 python pickle batch of n random images; returns the (n, 3072) data."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    entry = {b"data": data, b"labels": rng.integers(0, 10, size=n).tolist(), b"batch_label": b"tiny"}
    with open(directory / name, "wb") as f:
        pickle.dump(entry, f)
    return data


def write_image_folder(directory: Path, n: int = 4, size=(178, 218), seed: int = 0) -> None:
    """n random RGB JPEG/PNG images of the aligned-CelebA size (width 178, height 218)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"{i + 1:06d}.{'jpg' if i % 2 else 'png'}")


def narrow(dataset: str, monkeypatch) -> None:
    """Replace the paper architecture of ``dataset`` by one with 1/16 of the channels."""
    from python.models import ARCHITECTURES

    arch = ARCHITECTURES[dataset]
    monkeypatch.setitem(ARCHITECTURES, dataset, dataclasses.replace(
        arch, encoder_channels=tuple(c // 16 for c in arch.encoder_channels),
        decoder_channels=tuple(c // 16 for c in arch.decoder_channels),
        decoder_base_channels=arch.decoder_base_channels // 16))


def tiny_config(tmp_path: Path, dataset: str, data_dir=None, **overrides):
    """A TrainConfig of ``dataset`` for a run in ``tmp_path/run``: batch 5, 1 epoch, latent 4,
    no evaluation, one thread; ``overrides`` replace any of these."""
    from python.runs import TrainConfig

    values = dict(batch_size=5, epochs=1, latent_dim=4, evaluate=False, threads=1)
    values.update(overrides)
    config = TrainConfig.for_dataset(dataset, data_dir=None if data_dir is None else str(data_dir), **values)
    config.run_dir = str(tmp_path / "run")
    return config


def state_of(run_dir: Path) -> dict:
    """The latest checkpoint of a run, read directly (no fallback)."""
    from python.checkpoint import CHECKPOINT_NAME

    return torch.load(Path(run_dir) / CHECKPOINT_NAME, weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same counters, weights, optimiser and scheduler states."""
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key
    assert a["scheduler"] == b["scheduler"]
