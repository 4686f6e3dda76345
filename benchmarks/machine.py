"""The machine a benchmark ran on, and its fp32 FMA peak (nominal and measured).

The nominal peak is cores x FMA pipes x SIMD lanes x the clock /proc/cpuinfo reports. Under a
hypervisor that clock is the base clock, while the cores run at their boost clock, so the
nominal figure understates the real ceiling. The measured peak runs ``fma_peak.cpp`` (a loop of
independent register FMAs, built here with the system C++ compiler): that is the number the
kernel's achieved FMA rate is compared with.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

import eae_kernels

FMA_SOURCE = Path(__file__).with_name("fma_peak.cpp")
FMA_PIPES = 2  # fp32 FMA units per core on current x86 server cores (Zen 4/5, Ice Lake and later)


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def _mem_total_gib() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def simd_lanes(flags: set) -> int:
    """fp32 lanes of the widest FMA vector: 16 (AVX-512), 8 (AVX2 + FMA), else 4."""
    if "avx512f" in flags:
        return 16
    if "fma" in flags and "avx2" in flags:
        return 8
    return 4


def describe(device: torch.device, threads: int) -> dict:
    """A JSON-able description of the machine, the software and the thread count."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ext = eae_kernels._extension._C
    desc = {
        "cpu": info.get("model name", platform.processor() or "unknown"),
        "cpu_cores": cores,
        "cpu_mhz_reported": float(info["cpu MHz"]) if "cpu MHz" in info else None,
        "simd_lanes_fp32": simd_lanes(flags),
        "hypervisor": "hypervisor" in flags,
        "memory_gib": _mem_total_gib(),
        "threads": threads,
        "eae_kernels_cpu_isa": ext.cpu_isa() if ext is not None else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "eae_kernels": eae_kernels.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        desc.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_sms=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return desc


def device_label(device: torch.device) -> str:
    """A short human name for the device: the CPU model and threads, or the GPU name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpuinfo().get("model name", platform.processor() or "CPU")


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _run_fma(binary: str, iterations: int, threads: int) -> float:
    cmd = [binary, str(iterations), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.split()[2])


def fma_peak(threads: int, seconds: float = 0.5) -> dict:
    """fp32 FMA peak of this CPU: nominal and measured, in GFMA/s, or an ``error`` saying why not.

    Measured with 1 thread and with ``threads`` threads, best of 3 runs of about ``seconds`` each
    (the best, because other load on a shared machine only ever slows the loop down).
    """
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    lanes = simd_lanes(flags)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result: dict = {"threads": threads, "fma_pipes_assumed": FMA_PIPES, "simd_lanes": lanes}
    if "cpu MHz" in info:
        ghz = float(info["cpu MHz"]) / 1e3
        result["nominal_ghz"] = ghz
        result["nominal_gfma_s_per_core"] = FMA_PIPES * lanes * ghz
        result["nominal_gfma_s"] = min(threads, cores) * FMA_PIPES * lanes * ghz
    cxx = _compiler()
    if cxx is None:
        result["error"] = "no C++ compiler (g++, c++, clang++ or $CXX) to build fma_peak.cpp"
        return result
    with tempfile.TemporaryDirectory(prefix="eae_fma_") as tmp:
        binary = os.path.join(tmp, "fma_peak")
        cmd = [cxx, "-O2", "-march=native", "-ffp-contract=fast", "-fopenmp", str(FMA_SOURCE), "-o", binary]
        try:
            subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
            # Size the run from a short calibration: about `seconds` per measurement.
            probe = 2_000_000
            rate = _run_fma(binary, probe, 1)
            iterations = max(probe, int(seconds * rate / (24 * 16)))
            one = max(_run_fma(binary, iterations, 1) for _ in range(3))
            many = max(_run_fma(binary, iterations, threads) for _ in range(3))
        except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
            result["error"] = f"fma_peak.cpp failed to build or run: {exc}"
            return result
    result["measured_gfma_s_1_thread"] = one / 1e9
    result["measured_gfma_s"] = many / 1e9
    result["implied_ghz"] = one / 1e9 / (FMA_PIPES * lanes)
    return result
