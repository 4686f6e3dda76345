"""The benchmark's outputs: speedups, the performance targets, the JSON file and the Markdown report.

``results`` is the dict ``benchmarks.run.run_sweep`` returns (and the JSON file holds):
``machine``, ``fma_peak``, ``settings``, ``methods`` (name -> availability) and ``records``, one
per (method, N, d, k) with ``status`` 'ok', 'skipped', 'oom' or 'error'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

REFERENCE = "reference"

# The project's performance targets, for eae-kernels' own backends (forward+backward, speedup vs
# the reference).
SPEEDUP_TARGETS = ((100, 64, 1, 4.0), (4096, 64, 1, 8.0), (16384, 64, 1, 10.0))
MEMORY_TARGET = (65536, 64, 1, 100e6)  # N, d, k, bytes
FMA_TARGET = (16384, 64, 1, 0.5)  # N, d, k, fraction of the measured peak ("within 2x")


# ---------------------------------------------------------------------------------------------
# Lookups and derived numbers
# ---------------------------------------------------------------------------------------------


def find(records: list, method: str, n: int, d: int, k: int) -> Optional[dict]:
    for rec in records:
        if rec["method"] == method and (rec["N"], rec["d"], rec["k"]) == (n, d, k):
            return rec
    return None


def median(rec: Optional[dict], phase: str) -> Optional[float]:
    """Median seconds of ``phase`` ('fwd' or 'fwd_bwd') for a record that ran, else None."""
    if rec is None or rec["status"] != "ok" or not rec.get(phase):
        return None
    return rec[phase]["median_s"]


def add_speedups(records: list) -> None:
    """Set ``speedup_fwd`` and ``speedup_fwd_bwd``: the reference's time over the method's, on the
    same case (None where either did not run)."""
    for rec in records:
        ref = find(records, REFERENCE, rec["N"], rec["d"], rec["k"])
        for phase in ("fwd", "fwd_bwd"):
            mine, theirs = median(rec, phase), median(ref, phase)
            rec[f"speedup_{phase}"] = theirs / mine if mine and theirs else None


def ours_names(results: dict) -> list:
    return [name for name, m in results["methods"].items() if m["is_ours"] and m["available"]]


def evaluate_targets(results: dict) -> list:
    """The performance targets, each as {'target', 'measured', 'met'} (met: True, False or None when
    this run did not measure it), for every available backend of this package."""
    records = results["records"]
    peak = results.get("fma_peak") or {}
    out = []
    for ours in ours_names(results):
        for n, d, k, goal in SPEEDUP_TARGETS:
            rec = find(records, ours, n, d, k)
            speedup = rec.get("speedup_fwd_bwd") if rec else None
            missing = _why_missing(rec, find(records, REFERENCE, n, d, k))
            out.append(
                {
                    "target": f"{ours}: forward+backward >= {goal:g}x faster than reference at N={n}, d={d}, k={k}",
                    "measured": _speedup_text(speedup, goal) if speedup else missing,
                    "met": None if speedup is None else speedup >= goal,
                }
            )
        out.append(_versus_keops(records, ours))
        out.append(_memory_target(records, ours))
        if results["settings"]["device"] == "cpu":
            out.append(_fma_target(records, ours, peak))
    return out


def _speedup_text(speedup: float, goal: float) -> str:
    return f"{speedup:.1f}x" if speedup >= goal else f"{speedup:.1f}x ({goal / speedup:.2f}x short of the target)"


def _why_missing(*recs) -> str:
    for rec in recs:
        if rec is None:
            return "not measured in this run"
        if rec["status"] != "ok":
            return f"{rec['method']}: {rec['status']} ({rec.get('reason')})"
    return "not measured"


def _versus_keops(records: list, ours: str) -> dict:
    target = f"{ours}: forward+backward faster than pykeops at every N (KeOps compile time excluded)"
    ratios = []
    for rec in records:
        if rec["method"] != "pykeops":
            continue
        theirs = median(rec, "fwd_bwd")
        mine = median(find(records, ours, rec["N"], rec["d"], rec["k"]), "fwd_bwd")
        if theirs and mine:
            ratios.append((theirs / mine, rec["N"], rec["d"], rec["k"]))
    if not ratios:
        return {"target": target, "measured": "pykeops not measured in this run", "met": None}
    worst = min(ratios)
    return {
        "target": target,
        "measured": f"{worst[0]:.1f}x faster at worst (N={worst[1]}, d={worst[2]}, k={worst[3]}), "
        f"{max(ratios)[0]:.0f}x at best, over {len(ratios)} cases",
        "met": worst[0] > 1.0,
    }


def _memory_target(records: list, ours: str) -> dict:
    n, d, k, limit = MEMORY_TARGET
    target = f"{ours}: N={n}, d={d}, k={k} forward+backward completes with < {limit / 1e6:.0f} MB peak extra memory"
    rec = find(records, ours, n, d, k)
    if rec is None or rec["status"] != "ok" or rec["fwd_bwd"].get("peak_bytes") is None:
        return {"target": target, "measured": _why_missing(rec), "met": None}
    used = rec["fwd_bwd"]["peak_bytes"]
    measured = f"{used / 1e6:.1f} MB"
    ref = find(records, REFERENCE, n, d, k)
    if ref is not None and ref["status"] == "ok" and ref["fwd_bwd"].get("peak_bytes"):
        measured += f"; reference {ref['fwd_bwd']['peak_bytes'] / 1e9:.1f} GB"
    elif ref is not None and ref.get("predicted_bytes"):
        measured += f"; reference not run, predicted {ref['predicted_bytes'] / 1e9:.0f} GB ({ref['status']})"
    return {"target": target, "measured": measured, "met": used < limit}


def achieved_gfma(rec: Optional[dict]) -> Optional[float]:
    """N^2 d fused multiply-adds (one per coordinate of every ordered pair) per second of the
    forward pass, in GFMA/s."""
    t = median(rec, "fwd")
    return rec["N"] ** 2 * rec["d"] / t / 1e9 if t else None


def _fma_target(records: list, ours: str, peak: dict) -> dict:
    n, d, k, goal = FMA_TARGET
    target = f"{ours}: forward at N={n}, d={d}, k={k} within 2x of the CPU's fp32 FMA peak (N^2 d FMAs / time)"
    rec = find(records, ours, n, d, k)
    gfma = achieved_gfma(rec)
    if gfma is None:
        return {"target": target, "measured": _why_missing(rec), "met": None}
    parts = [f"{gfma:.0f} GFMA/s (median)"]
    met = None
    if peak.get("measured_gfma_s"):
        frac = gfma / peak["measured_gfma_s"]
        parts.append(f"{frac:.0%} of the measured peak {peak['measured_gfma_s']:.0f} GFMA/s")
        best = rec["N"] ** 2 * rec["d"] / rec["fwd"]["min_s"] / 1e9
        parts.append(f"fastest sample {best:.0f} GFMA/s = {best / peak['measured_gfma_s']:.0%}")
        met = frac >= goal
    if peak.get("nominal_gfma_s"):
        parts.append(f"{gfma / peak['nominal_gfma_s']:.0%} of the nominal {peak['nominal_gfma_s']:.0f} GFMA/s")
    if peak.get("error"):
        parts.append(f"peak not measured: {peak['error']}")
    return {"target": target, "measured": "; ".join(parts), "met": met}


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    if n < 1e6:
        return f"{n / 1e3:.0f} kB"
    if n < 1e9:
        return f"{n / 1e6:.3g} MB"
    return f"{n / 1e9:.3g} GB"


def fmt_speedup(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def status_text(rec: dict) -> str:
    """Why a record has no numbers: 'OOM (...)', 'skipped (...)' or 'error (...)'."""
    label = {"oom": "OOM", "skipped": "skipped", "error": "error"}[rec["status"]]
    return f"{label} ({rec['reason']})" if rec.get("reason") else label


def _cell(rec: Optional[dict], phase: str) -> str:
    """A table cell: 'time (speedup vs reference)', or the status of a case that did not run."""
    if rec is None:
        return ""
    if rec["status"] != "ok":
        return "OOM" if rec["status"] == "oom" else rec["status"]
    t = median(rec, phase)
    if t is None:
        return "n/a"
    speedup = rec.get(f"speedup_{phase}")
    return fmt_time(t) + (f" ({fmt_speedup(speedup)})" if speedup and rec["method"] != REFERENCE else "")


def _table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def headline_table(results: dict, d: int, k: int) -> list:
    """Rows N, columns methods: forward+backward time (forward for forward-only methods) and, in
    brackets, the speedup over the reference."""
    records = results["records"]
    names = [name for name, m in results["methods"].items() if m["available"]]
    header = ["N"] + [name + (" (fwd only)" if results["methods"][name]["forward_only"] else "") for name in names]
    rows = []
    for n in results["settings"]["sizes"]:
        row = [f"{n:,}"]
        for name in names:
            phase = "fwd" if results["methods"][name]["forward_only"] else "fwd_bwd"
            row.append(_cell(find(records, name, n, d, k), phase))
        rows.append(row)
    return _table(header, rows)


def memory_table(results: dict, d: int, k: int) -> list:
    records = results["records"]
    names = [name for name, m in results["methods"].items() if m["available"]]
    rows = []
    for n in results["settings"]["sizes"]:
        row = [f"{n:,}"]
        for name in names:
            rec = find(records, name, n, d, k)
            phase = "fwd" if results["methods"][name]["forward_only"] else "fwd_bwd"
            if rec is None:
                row.append("")
            elif rec["status"] == "ok":
                row.append(fmt_bytes(rec[phase].get("peak_bytes")))
            elif rec.get("predicted_bytes") and rec["status"] == "oom":
                row.append(f"OOM (~{fmt_bytes(rec['predicted_bytes'])})")
            else:
                row.append(_cell(rec, phase))
        rows.append(row)
    return _table(["N"] + names, rows)


def detail_table(results: dict, d: int, k: int) -> list:
    header = ["N", "method", "fwd", "fwd+bwd", "speedup fwd", "speedup fwd+bwd", "compile", "peak mem", "repeats",
              "load", "check"]
    rows = []
    for n in results["settings"]["sizes"]:
        for rec in results["records"]:
            if (rec["N"], rec["d"], rec["k"]) != (n, d, k) or not results["methods"][rec["method"]]["available"]:
                continue
            if rec["status"] != "ok":
                rows.append([f"{n:,}", rec["method"], status_text(rec)] + [""] * 8)
                continue
            main = rec["fwd_bwd"] or rec["fwd"]
            check = rec.get("check") or {}
            verdict = {True: "ok: ", False: "**FAIL**: ", None: ""}[check.get("ok")]
            check_text = verdict + (check.get("detail") or "")
            rows.append(
                [
                    f"{n:,}",
                    rec["method"],
                    fmt_time(median(rec, "fwd")),
                    fmt_time(median(rec, "fwd_bwd")) if rec["fwd_bwd"] else "n/a",
                    fmt_speedup(rec.get("speedup_fwd")),
                    fmt_speedup(rec.get("speedup_fwd_bwd")),
                    f"{rec['compile_s']:.1f} s" if rec.get("compile_s") is not None else "",
                    fmt_bytes(main.get("peak_bytes")),
                    "/".join(str(rec[p]["repeats"]) for p in ("fwd", "fwd_bwd") if rec.get(p)),
                    f"{rec['load_average']:.1f}" if rec.get("load_average") is not None else "",
                    check_text,
                ]
            )
    return _table(header, rows)


def machine_lines(results: dict) -> list:
    m, s, peak = results["machine"], results["settings"], results.get("fma_peak") or {}
    lines = [
        f"- Command: `{results['command']}` ({results['started']}, took {results['duration_s'] / 60:.1f} min)",
        f"- Machine: {m['cpu']}, {m['cpu_cores']} cores{' (virtual machine)' if m['hypervisor'] else ''}, "
        f"{m['memory_gib']} GiB; {s['threads']} threads (torch.set_num_threads); "
        f"eae-kernels {m['eae_kernels']} (CPU kernel: {m['eae_kernels_cpu_isa']}), torch {m['torch']}, "
        f"Python {m['python']}",
    ]
    load = results["load_average"]
    busy = load["before"] > 0.5 * s["threads"] or load["after"] > s["threads"] + 1  # the run itself adds ~threads
    lines.append(
        f"- Load average (1 min) {load['before']:.1f} before the run, {load['after']:.1f} at its end (this "
        f"benchmark itself adds about {s['threads']})" + (": other work competed, timings are noisy" if busy else "")
    )
    if "gpu" in m:
        lines.append(f"- GPU: {m['gpu']}, {m['gpu_memory_gib']} GiB, {m['gpu_sms']} SMs, CUDA {m['cuda']}")
    if peak.get("measured_gfma_s"):
        lines.append(
            f"- fp32 FMA peak, measured (benchmarks/fma_peak.cpp): {peak['measured_gfma_s']:.0f} GFMA/s on "
            f"{peak['threads']} threads, {peak['measured_gfma_s_1_thread']:.0f} on 1 "
            f"(= {peak['implied_ghz']:.2f} GHz x {peak['fma_pipes_assumed']} FMA pipes x {peak['simd_lanes']} lanes); "
            f"nominal {peak.get('nominal_gfma_s', float('nan')):.0f} GFMA/s at the reported "
            f"{peak.get('nominal_ghz', float('nan')):.2f} GHz"
        )
    elif peak.get("error"):
        lines.append(f"- fp32 FMA peak: not measured ({peak['error']})")
    lines.append(
        f"- Method: float32 inputs torch.randn (seed {s['seed']}), the same for every method; median of repeats "
        f"after warm-up (calls over {s['target_s']:g} s timed once, after the smaller sizes warmed the method up); "
        f"cases predicted over {s['max_call_s']:g} s per call or over the {fmt_bytes(s['memory_budget_bytes'])} "
        "memory budget are not run; peak memory = resident-set high-water mark above the level before the call "
        "(CPU) or torch.cuda.max_memory_allocated (GPU); each result checked against the reference where it fits."
    )
    return lines


def to_markdown(results: dict) -> str:
    s = results["settings"]
    title = f"# Benchmark: {results['device_label']} ({s['device']}{', quick subset' if s['quick'] else ''})"
    out = [title, ""] + machine_lines(results) + ["", "## Methods", ""]
    rows = []
    for name, m in results["methods"].items():
        rows.append([name, "yes" if m["available"] else "skipped", m["note"] if m["available"] else m["unavailable"]])
    out += _table(["method", "ran", "what is measured / why skipped"], rows)
    out += ["", "## Performance targets", ""]
    out += _table(
        ["target", "measured", "met"],
        [[t["target"], t["measured"], {True: "yes", False: "**no**", None: "-"}[t["met"]]] for t in results["targets"]],
    )
    for d in s["dims"]:
        for k in s["ks"]:
            out += ["", f"## Forward+backward time, d={d}, k={k} (speedup vs reference)", ""]
            out += headline_table(results, d, k)
    d, k = (64 if 64 in s["dims"] else s["dims"][0]), s["ks"][0]
    out += ["", f"## Peak extra memory, forward+backward, d={d}, k={k}", ""] + memory_table(results, d, k)
    out += ["", "## All cases", "", "repeats: timed samples (forward/forward+backward); load: the machine's 1-minute load "
            f"average when the case started (this benchmark accounts for about {s['threads']} of it; well above "
            "that, other work competed for the cores)."]
    for d in s["dims"]:
        for k in s["ks"]:
            out += ["", f"### d={d}, k={k}", ""] + detail_table(results, d, k)
    failed = [r for r in results["records"] if (r.get("check") or {}).get("ok") is False]
    if failed:
        out += ["", f"**{len(failed)} results disagree with the reference** (see the check column)."]
    if results.get("estimators"):
        from . import estimators

        out += estimators.to_markdown(results["estimators"])
    return "\n".join(out) + "\n"


def write(results: dict, out_dir: Path, stem: str) -> dict:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["md"].write_text(to_markdown(results))
    return paths
