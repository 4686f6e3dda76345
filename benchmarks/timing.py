"""Wall-clock timing of one call, warm-up then the median of repeats, and its peak memory.

- ``first_s``: the first call at this size, timed on its own. For methods that compile on first
  use (torch.compile, KeOps) ``first_s - median_s`` is the compile time, reported separately.
- The warm-up call that sizes the samples also carries the memory probe (the probe's own work,
  a garbage collection and reading /proc, happens outside the timed region).
- Calls shorter than ``min_sample_s`` are timed in batches of ``inner`` calls (timeit-style), so
  that the clock's resolution and the per-sample overhead do not dominate.
- A call at least ``target_s`` long is timed once: the method has already been warmed up on
  every smaller size of the sweep, and one-off costs are negligible against seconds. This keeps
  the slow baselines to one or two calls per size.
- On a GPU every sample is bracketed by CUDA events after a synchronize.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class Timing:
    median_s: float  # median time of one call
    min_s: float  # fastest sample (kept in the JSON: on a busy machine it is the steadier figure)
    first_s: float  # the first call at this size (includes compilation for methods that compile)
    repeats: int  # samples the median is taken over
    inner: int  # calls per sample
    peak_bytes: Optional[int] = None  # peak extra memory of one call, when probed

    def as_dict(self) -> dict:
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "first_s": self.first_s,
            "repeats": self.repeats,
            "inner": self.inner,
            "peak_bytes": self.peak_bytes,
        }


class Clock:
    """Times ``fn()`` on ``device``: perf_counter on a CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], calls: int = 1) -> float:
        """Seconds for ``calls`` back-to-back calls of ``fn``."""
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - start


def measure(
    fn: Callable[[], object],
    clock: Clock,
    *,
    target_s: float = 2.0,
    compiles: bool = False,
    memory_probe: Optional[Callable[[Callable[[], object]], int]] = None,
    min_repeats: int = 3,
    max_repeats: int = 25,
    min_sample_s: float = 2e-3,
) -> Timing:
    """Median time of ``fn()``, spending about ``target_s`` seconds on the timed repeats.

    Args:
        fn: the call to time.
        clock: how to time it (CPU or CUDA).
        target_s: about how long the timed repeats take in all.
        compiles: the first call may compile code: it is kept out of the samples and their sizing.
        memory_probe: ``probe(call) -> bytes``, the peak extra memory of ``call()`` (see
            ``benchmarks.memory``); run on one warm-up call.

    Returns:
        A Timing; ``peak_bytes`` is set when ``memory_probe`` is given.
    """
    first = clock(fn) if compiles else None
    peak = None
    if memory_probe is None:
        estimate = clock(fn)
    else:
        holder = []
        peak = memory_probe(lambda: holder.append(clock(fn)))
        estimate = holder[0]
    first = estimate if first is None else first
    if estimate >= target_s:
        return Timing(estimate, estimate, first, 1, 1, peak)
    if estimate < target_s / 4:
        estimate = clock(fn)  # cheap calls get a second warm-up (caches, thread pools)
    inner = max(1, min(1000, math.ceil(min_sample_s / max(estimate, 1e-9))))
    per_sample = estimate * inner
    repeats = int(min(max_repeats, max(min_repeats, target_s // per_sample)))
    samples = [clock(fn, inner) / inner for _ in range(repeats)]
    return Timing(statistics.median(samples), min(samples), first, repeats, inner, peak)
