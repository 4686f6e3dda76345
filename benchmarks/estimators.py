"""The estimator rows of ``python -m benchmarks.run``: each new op against what a user would write
instead, forward+backward, in one run (ratios on the same machine state).

- kl_divergence vs the naive version (torch.cdist + topk + autograd: ``reference.kl_divergence``);
- koleo_loss vs DINOv2's KoLeoLoss formula (normalise, torch.mm, fill the diagonal, max,
  PairwiseDistance, -log(d + eps).mean()) at B in {256, 1024, 4096}, d in {384, 768};
- a batch of B=64 sets of N=100, d=16 (the EAE shape) in one call vs a Python loop of single-set
  kl_entropy calls;
- koleo_loss at B=65,536 (d=64): its peak extra memory, where the dense formula's B x B matrix
  alone is B^2 * 4 bytes (17 GB; not run).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import eae_kernels
from eae_kernels import reference

from . import memory
from .timing import Clock, measure

KOLEO_SIZES = ((256, 384), (256, 768), (1024, 384), (1024, 768), (4096, 384), (4096, 768))
KOLEO_TARGET_SIZES = ((1024, 768), (4096, 768))
QUICK_KOLEO_SIZES = ((1024, 768),)
DIVERGENCE_SIZES = ((1024, 16), (4096, 16), (4096, 64))
BATCH_SHAPE = (64, 100, 16)  # B sets of N rows, d
BATCH_TARGET = 10.0
KOLEO_MEMORY_SHAPE = (65_536, 64)


def dinov2_koleo(student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeoLoss.forward (dinov2/loss/koleo_loss.py) without its autocast guard."""
    pdist = nn.PairwiseDistance(2, eps=1e-8)
    student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(student_output, student_output.t())
    n = student_output.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)  # Trick to fill diagonal with -1
    _, indices = torch.max(dots, dim=1)
    distances = pdist(student_output, student_output[indices])
    return -torch.log(distances + eps).mean()


def _fwd_bwd(loss_fn: Callable, *inputs: torch.Tensor) -> Callable[[], None]:
    def call():
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        loss_fn(*leaves).sum().backward()

    return call


def _inputs(shape, seed: int, device, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) + shift).to(device)


def _pair(case: str, ours: Callable, baseline: Callable, clock: Clock, target_s: float, probe) -> dict:
    load = os.getloadavg()[0]
    t_ours = measure(ours, clock, target_s=target_s, memory_probe=probe)
    t_base = measure(baseline, clock, target_s=target_s, memory_probe=probe)
    return {
        "case": case,
        "ours_s": t_ours.median_s,
        "baseline_s": t_base.median_s,
        "speedup": t_base.median_s / t_ours.median_s,
        "ours_peak_bytes": t_ours.peak_bytes,
        "baseline_peak_bytes": t_base.peak_bytes,
        "load": load,
    }


def run(device: torch.device, target_s: float = 1.0, quick: bool = False, progress=print) -> dict:
    """Measures every estimator row; returns {'records': [...], 'targets': [...]}."""
    clock = Clock(device)
    probe = None
    if (memory.cpu_unsupported_reason() is None) or device.type == "cuda":
        probe = lambda fn: memory.peak_extra_bytes(fn, device)  # noqa: E731
    records = []

    for n, d in DIVERGENCE_SIZES[:1] if quick else DIVERGENCE_SIZES:
        x, y = _inputs((n, d), 1, device), _inputs((n, d), 2, device, shift=0.5)
        rec = _pair(
            f"kl_divergence fwd+bwd, N=M={n}, d={d}, k=1",
            _fwd_bwd(lambda a, b: eae_kernels.kl_divergence(a, b), x, y),
            _fwd_bwd(lambda a, b: reference.kl_divergence(a, b), x, y),
            clock, target_s, probe,
        )
        rec["baseline"] = "naive: torch.cdist + topk + autograd (reference.kl_divergence)"
        records.append(rec)
        progress(_line(rec))

    for b, d in QUICK_KOLEO_SIZES if quick else KOLEO_SIZES:
        x = _inputs((b, d), 3, device)
        rec = _pair(
            f"koleo_loss fwd+bwd, B={b}, d={d}",
            _fwd_bwd(eae_kernels.koleo_loss, x),
            _fwd_bwd(dinov2_koleo, x),
            clock, target_s, probe,
        )
        rec["baseline"] = "DINOv2 KoLeoLoss formula (dense B x B torch.mm)"
        rec["koleo"] = (b, d)
        records.append(rec)
        progress(_line(rec))

    sets, n, d = BATCH_SHAPE
    z = _inputs(BATCH_SHAPE, 4, device)

    def loop(t):
        return torch.stack([eae_kernels.kl_entropy(t[i]) for i in range(sets)])

    rec = _pair(
        f"kl_entropy fwd+bwd, B={sets} sets of N={n}, d={d}",
        _fwd_bwd(eae_kernels.kl_entropy, z),
        _fwd_bwd(loop, z),
        clock, target_s, probe,
    )
    rec["baseline"] = "a Python loop of single-set kl_entropy calls"
    rec["batched"] = True
    records.append(rec)
    progress(_line(rec))

    memory_row = None
    if not quick and device.type == "cpu" and probe is not None:
        b, d = KOLEO_MEMORY_SHAPE
        x = _inputs((b, d), 5, device)
        load = os.getloadavg()[0]
        t = measure(_fwd_bwd(eae_kernels.koleo_loss, x), clock, target_s=0.0, memory_probe=probe)
        memory_row = {
            "case": f"koleo_loss fwd+bwd, B={b}, d={d}",
            "ours_s": t.median_s,
            "ours_peak_bytes": t.peak_bytes,
            "input_bytes": x.numel() * 4,
            "dense_matrix_bytes": b * b * 4,
            "load": load,
        }
        progress(f"  {memory_row['case']}: {memory_row['ours_s']:.1f} s, peak extra {memory_row['ours_peak_bytes'] / 1e6:.0f} MB "
                 f"(input {memory_row['input_bytes'] / 1e6:.0f} MB; the dense B x B matrix alone: {b * b * 4 / 1e9:.1f} GB)")
    return {"records": records, "memory": memory_row, "targets": targets(records, memory_row)}


def _line(rec: dict) -> str:
    return (f"  {rec['case']}: ours {rec['ours_s'] * 1e3:.2f} ms, baseline {rec['baseline_s'] * 1e3:.2f} ms, "
            f"speedup {rec['speedup']:.2f}x (load {rec['load']:.1f})")


def targets(records: list, memory_row) -> list:
    out = []
    for rec in records:
        if rec.get("batched"):
            out.append({"target": f"batched kl_entropy >= {BATCH_TARGET:g}x a loop of single-set calls ({rec['case']})",
                        "measured": f"{rec['speedup']:.1f}x", "met": rec["speedup"] >= BATCH_TARGET})
        if tuple(rec.get("koleo", ())) in KOLEO_TARGET_SIZES:
            out.append({"target": f"koleo_loss at least as fast as DINOv2's formula ({rec['case']})",
                        "measured": f"{rec['speedup']:.2f}x", "met": rec["speedup"] >= 1.0})
    if memory_row is not None:
        ok = memory_row["ours_peak_bytes"] < 20 * memory_row["input_bytes"]
        out.append({"target": f"koleo_loss in O(B d) memory ({memory_row['case']})",
                    "measured": f"peak extra {memory_row['ours_peak_bytes'] / 1e6:.0f} MB = "
                                f"{memory_row['ours_peak_bytes'] / memory_row['input_bytes']:.1f}x the input "
                                f"(dense formula: {memory_row['dense_matrix_bytes'] / 1e9:.1f} GB)",
                    "met": ok})
    return out


def to_markdown(section: dict) -> list:
    out = ["", "## Estimators (forward+backward, ours vs what a user would write)", ""]
    out += ["| case | ours | baseline | speedup | peak extra memory (ours / baseline) | load | baseline is |",
            "|---|---|---|---|---|---|---|"]
    for r in section["records"]:
        mem = "-"
        if r.get("ours_peak_bytes") is not None:
            mem = f"{r['ours_peak_bytes'] / 1e6:.1f} MB / {r['baseline_peak_bytes'] / 1e6:.1f} MB"
        out.append(f"| {r['case']} | {r['ours_s'] * 1e3:.2f} ms | {r['baseline_s'] * 1e3:.2f} ms | "
                   f"{r['speedup']:.2f}x | {mem} | {r['load']:.1f} | {r['baseline']} |")
    m = section.get("memory")
    if m:
        out += ["", f"{m['case']}: {m['ours_s']:.1f} s, peak extra memory {m['ours_peak_bytes'] / 1e6:.0f} MB "
                f"(input {m['input_bytes'] / 1e6:.0f} MB); DINOv2's formula would hold a "
                f"{m['dense_matrix_bytes'] / 1e9:.1f} GB B x B matrix (not run). Load {m['load']:.1f}."]
    out += ["", "| target | measured | met |", "|---|---|---|"]
    out += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in section["targets"]]
    return out
