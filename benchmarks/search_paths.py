"""python -m benchmarks.run --search-paths: the CPU backend's exact and mixed neighbour searches.

Rows "cpu exact" and "cpu mixed" are kl_entropy(z, k, backend="cpu") forward+backward with
EAE_KERNELS_SEARCH=exact and =mixed, measured in the same process and alternated (exact, mixed,
exact, mixed, ...) so that both see the same load; the speedup is the ratio of the fastest calls
(on a shared machine other load only ever slows a call down), with the range of the per-round
ratios beside it. Every mixed result (H and gradient) is checked bit for bit against the exact one.
Pair-coordinates per second (N^2 d / time) are compared with the machine's measured fp32 FMA peak
(benchmarks/machine.py): the exact search needs at least one FMA per pair and coordinate.

With --threads 1 the times are the calling thread's CPU time (time.thread_time), which other load
on a shared machine does not inflate; with more threads they are wall-clock times.

Inputs: Gaussian rows at N in {4096, 16384}, d in {64, 128}, k in {1, 5}, and adversarial rows
(duplicates, tight clusters, offsets, an outlier, d = 1, all rows equal) at N = 4096, where the
mixed search must fall back without costing more than 15% over the exact one; these rows also
time EAE_KERNELS_SEARCH=auto, which is what a user gets.

Cross-set rows: kl_divergence(x, y) forward+backward (x searched among x and among y in one pass,
both gradients), x ~ N(0, I) and y ~ N(0.5, I), N rows each at N in {4096, 16384}, d in {64, 128};
their pair-coordinates per call are 2 N^2 d.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

import eae_kernels

SIZES = (4096, 16384)
DIMS = (64, 128)
KS = (1, 5)
ADVERSARIAL_N = 4096
TARGETS = {(16384, 128): 1.5, (4096, 64): 1.3}  # minimum speedup of mixed over exact
ADVERSARIAL_MAX_SLOWDOWN = 1.15


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def clustered(n: int, d: int, clusters: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(clusters, d, generator=g)
    return centres[torch.randint(0, clusters, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)


def adversarial_inputs(n: int) -> list[tuple[str, torch.Tensor]]:
    half = gaussian(n // 2, 64, 1)
    z = gaussian(n, 64, 2)
    return [
        ("pairs of duplicates, d=64", torch.cat([half, half])),
        ("10 clusters, spread 1e-3, d=64", clustered(n, 64, 10, 1e-3, 3)),
        ("10 clusters, spread 1e-6, d=64", clustered(n, 64, 10, 1e-6, 4)),
        ("z + 1e4, d=64", z + 1e4),
        ("one outlier at 1e6, d=64", torch.cat([z[:-1], torch.full((1, 64), 1e6)])),
        ("all rows equal, d=64", torch.ones(n, 64)),
        ("d=1", gaussian(n, 1, 5)),
        ("d=4", gaussian(n, 4, 6)),
    ]


def clock():
    """With one thread the whole call runs on this thread: its CPU time is the cost, whatever the
    other processes on a shared machine do. With more threads, wall-clock time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def fwd_bwd(inputs: tuple, k: int, mode: str) -> tuple[float, list]:
    """One forward+backward of kl_entropy(z) (inputs (z,)) or kl_divergence(x, y) (inputs (x, y))
    with the search forced to `mode`: (time, [value, gradients...])."""
    os.environ["EAE_KERNELS_SEARCH"] = mode
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    fn = eae_kernels.kl_entropy if len(leaves) == 1 else eae_kernels.kl_divergence
    now = clock()
    t = now()
    v = fn(*leaves, k=k, backend="cpu")
    v.backward()
    return now() - t, [v.detach(), *(leaf.grad for leaf in leaves)]


def compare(inputs: tuple, k: int, rounds: int, min_round_s: float, modes=("exact", "mixed")) -> dict:
    """Alternated timings of the search modes; each round keeps the fastest of a few calls."""
    saved = os.environ.get("EAE_KERNELS_SEARCH")
    ext = eae_kernels._extension._C
    try:
        _, reference = fwd_bwd(inputs, k, "exact")  # warm-up and the reference result
        identical = True
        for mode in modes[1:]:
            _, out = fwd_bwd(inputs, k, mode)
            identical = identical and all(torch.equal(a, b) for a, b in zip(reference, out, strict=True))
        stats_before = ext.cpu_mixed_search_stats()
        times = {mode: [] for mode in modes}
        for _ in range(rounds):
            for mode in modes:
                best, spent = float("inf"), 0.0
                while spent < min_round_s or best == float("inf"):
                    t = fwd_bwd(inputs, k, mode)[0]
                    best, spent = min(best, t), spent + t
                times[mode].append(best)
        stats_after = ext.cpu_mixed_search_stats()
    finally:
        if saved is None:
            os.environ.pop("EAE_KERNELS_SEARCH", None)
        else:
            os.environ["EAE_KERNELS_SEARCH"] = saved
    blocks_mixed = stats_after[1] - stats_before[1]
    blocks_exact = stats_after[2] - stats_before[2]
    rec = {"bit_identical": identical,
           "fallback_fraction": blocks_exact / max(1, blocks_mixed + blocks_exact),
           "mixed_path_taken": (stats_after[0] - stats_before[0]) > 0}
    for mode in modes:
        rec[f"{mode}_s"] = min(times[mode])
    for mode in modes[1:]:
        ratios = [e / m for e, m in zip(times["exact"], times[mode])]
        rec[f"speedup_{mode}"] = min(times["exact"]) / min(times[mode])
        rec[f"speedup_{mode}_range"] = [min(ratios), max(ratios)]
    return rec


def run(threads: int, rounds: int = 3, min_round_s: float = 0.3, out_dir: Path | None = None,
        sizes=SIZES, dims=DIMS, ks=KS, adversarial_n: int = ADVERSARIAL_N, fma_seconds: float = 0.3,
        cross_sizes=SIZES, cross_dims=DIMS, cross_ks=(1,)) -> dict:
    """All rows (empty sizes / cross_sizes or adversarial_n = 0 leave a group out)."""
    from . import machine

    torch.set_num_threads(threads)
    ext = eae_kernels._extension._C
    if ext is None or not ext.cpu_mixed_search_supported():
        raise SystemExit("--search-paths: this CPU (or build) has no mixed search (needs AVX-512 VNNI)")
    peak = machine.fma_peak(threads, fma_seconds)
    peak_g = peak.get("measured_gfma_s")
    load = [os.getloadavg()[0]]
    rows = []
    for n in sizes:
        for d in dims:
            z = gaussian(n, d, seed=n + d)
            for k in ks:
                rec = {"op": "kl_entropy", "input": "gaussian", "N": n, "d": d, "k": k,
                       **compare((z,), k, rounds, min_round_s)}
                add_rates(rec, n * n * d, peak_g)
                rows.append(rec)
                print(line(rec), flush=True)
                load.append(os.getloadavg()[0])
    for n in cross_sizes:
        for d in cross_dims:
            x, y = gaussian(n, d, seed=n + d), gaussian(n, d, seed=n + d + 1) + 0.5
            for k in cross_ks:
                rec = {"op": "kl_divergence", "input": "gaussian x, y + 0.5", "N": n, "d": d, "k": k,
                       **compare((x, y), k, rounds, min_round_s)}
                add_rates(rec, 2 * n * n * d, peak_g)
                rows.append(rec)
                print(line(rec), flush=True)
                load.append(os.getloadavg()[0])
    for name, z in adversarial_inputs(adversarial_n) if adversarial_n else []:
        for k in ks:
            rec = {"op": "kl_entropy", "input": name, "N": z.shape[0], "d": z.shape[1], "k": k,
                   **compare((z,), k, rounds, min_round_s, ("exact", "mixed", "auto"))}
            rows.append(rec)
            print(line(rec), flush=True)
            load.append(os.getloadavg()[0])
    results = {
        "device_label": machine.device_label(torch.device("cpu")),
        "threads": threads,
        "clock": "thread CPU time" if threads == 1 else "wall clock",
        "fma_peak": peak,
        "load_average": {"min": min(load), "max": max(load), "samples": load},
        "rows": rows,
        "targets": evaluate(rows),
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "cpu-search-paths.json").write_text(json.dumps(results, indent=1))
        (out_dir / "cpu-search-paths.md").write_text("\n".join(markdown(results)) + "\n")
    return results


def add_rates(rec: dict, pair_coordinates: int, peak_g) -> None:
    """Pair-coordinates per second of both paths, and their fraction of the FMA peak."""
    for path in ("exact", "mixed"):
        rate = pair_coordinates / rec[f"{path}_s"] / 1e9
        rec[f"{path}_gpc_s"] = rate
        rec[f"{path}_of_fma_peak"] = rate / peak_g if peak_g else None


def line(rec: dict) -> str:
    out = f"{rec['op']:13s} {rec['input']:32s} N={rec['N']:6d} d={rec['d']:4d} k={rec['k']}: exact {rec['exact_s'] * 1e3:8.1f} ms"
    for mode in ("mixed", "auto"):
        if f"{mode}_s" in rec:
            lo, hi = rec[f"speedup_{mode}_range"]
            out += f", {mode} {rec[f'{mode}_s'] * 1e3:8.1f} ms ({rec[f'speedup_{mode}']:.2f}x [{lo:.2f}, {hi:.2f}])"
    if "mixed_gpc_s" in rec:
        out += f", {rec['mixed_gpc_s']:.0f} G pair-coords/s mixed"
    return out + f", fallback {rec['fallback_fraction']:.0%}, identical {rec['bit_identical']}"


def evaluate(rows: list) -> list:
    out = []
    for (n, d), need in TARGETS.items():
        got = [r["speedup_mixed"] for r in rows
               if r["op"] == "kl_entropy" and r["input"] == "gaussian" and (r["N"], r["d"]) == (n, d)]
        if got:
            out.append({"target": f"mixed >= {need}x exact at N={n}, d={d} (k=1 and 5)",
                        "measured": ", ".join(f"{s:.2f}x" for s in got), "met": min(got) >= need})
    adv = [r["speedup_auto"] for r in rows if "speedup_auto" in r]
    if adv:
        out.append({"target": f"adversarial inputs (EAE_KERNELS_SEARCH=auto) never slower than "
                              f"{ADVERSARIAL_MAX_SLOWDOWN}x exact",
                    "measured": f"worst speedup {min(adv):.2f}x", "met": min(adv) >= 1 / ADVERSARIAL_MAX_SLOWDOWN})
    out.append({"target": "bit-identical H and gradient in every case",
                "measured": f"{sum(r['bit_identical'] for r in rows)}/{len(rows)}",
                "met": all(r["bit_identical"] for r in rows)})
    return out


def markdown(results: dict) -> list:
    peak = results["fma_peak"].get("measured_gfma_s")
    load = results["load_average"]
    out = [
        f"# CPU exact vs mixed neighbour search ({results['device_label']}, {results['threads']} threads)",
        "",
        f"kl_entropy (and kl_divergence: x in x and x in y) forward+backward, float32, fastest call of alternated rounds ({results['clock']}). "
        f"Load average during the run: "
        f"{load['min']:.1f} - {load['max']:.1f}. Measured fp32 FMA peak: "
        + (f"{peak:.0f} GFMA/s." if peak else "not measured."),
        "",
        "| op | input | N | d | k | cpu exact | cpu mixed (speedup [range]) | auto (speedup) | pair-coords/s exact, mixed (vs FMA peak) | fallback | bit-identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        rate = ""
        if "mixed_gpc_s" in r:
            rate = (f"{r['exact_gpc_s']:.0f} G ({r['exact_of_fma_peak']:.0%}), {r['mixed_gpc_s']:.0f} G "
                    f"({r['mixed_of_fma_peak']:.0%})" if peak else f"{r['exact_gpc_s']:.0f} G, {r['mixed_gpc_s']:.0f} G")
        lo, hi = r["speedup_mixed_range"]
        auto = f"{r['auto_s'] * 1e3:.1f} ms ({r['speedup_auto']:.2f}x)" if "auto_s" in r else "= mixed"
        out.append(
            f"| {r['op']} | {r['input']} | {r['N']} | {r['d']} | {r['k']} | {r['exact_s'] * 1e3:.1f} ms | "
            f"{r['mixed_s'] * 1e3:.1f} ms ({r['speedup_mixed']:.2f}x [{lo:.2f}, {hi:.2f}]) | {auto} | {rate} | "
            f"{r['fallback_fraction']:.0%} | {'yes' if r['bit_identical'] else 'NO'} |"
        )
    out += ["", "Targets:", ""]
    out += [f"- [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}" for t in results["targets"]]
    return out
