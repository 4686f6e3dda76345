"""python -m benchmarks.run --search-paths: the CPU backend's exact and mixed neighbour searches.

Rows "cpu exact" and "cpu mixed" are kl_entropy(z, k, backend="cpu") forward+backward with
EAE_KERNELS_SEARCH=exact and =mixed, measured in the same process and alternated (exact, mixed,
exact, mixed, ...) so that both see the same load; the speedup is the ratio of the fastest calls
(on a shared machine other load only ever slows a call down), with the range of the per-round
ratios beside it. Every mixed result (H and gradient) is checked bit for bit against the exact one.
Pair-coordinates per second (N^2 d / time) are compared with the machine's measured fp32 FMA peak
(benchmarks/machine.py): the exact search needs at least one FMA per pair and coordinate.

Inputs: Gaussian rows at N in {4096, 16384}, d in {64, 128}, k in {1, 5}, and adversarial rows
(duplicates, tight clusters, offsets, an outlier, d = 1, all rows equal) at N = 4096, where the
mixed search must fall back without costing more than 15% over the exact one.
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


def fwd_bwd(z: torch.Tensor, k: int, mode: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    os.environ["EAE_KERNELS_SEARCH"] = mode
    zz = z.detach().requires_grad_(True)
    t = time.perf_counter()
    h = eae_kernels.kl_entropy(zz, k=k, backend="cpu")
    h.backward()
    return time.perf_counter() - t, h.detach(), zz.grad


def compare(z: torch.Tensor, k: int, rounds: int, min_round_s: float) -> dict:
    """Alternated timings of the two paths; each round keeps the fastest of a few calls."""
    saved = os.environ.get("EAE_KERNELS_SEARCH")
    try:
        _, h_exact, g_exact = fwd_bwd(z, k, "exact")  # warm-up and the reference result
        _, h_mixed, g_mixed = fwd_bwd(z, k, "mixed")
        identical = torch.equal(h_exact, h_mixed) and torch.equal(g_exact, g_mixed)
        stats_before = eae_kernels._extension._C.cpu_mixed_search_stats()
        times = {"exact": [], "mixed": []}
        for _ in range(rounds):
            for mode in ("exact", "mixed"):
                best, spent = float("inf"), 0.0
                while spent < min_round_s or best == float("inf"):
                    t = fwd_bwd(z, k, mode)[0]
                    best, spent = min(best, t), spent + t
                times[mode].append(best)
        stats_after = eae_kernels._extension._C.cpu_mixed_search_stats()
    finally:
        if saved is None:
            os.environ.pop("EAE_KERNELS_SEARCH", None)
        else:
            os.environ["EAE_KERNELS_SEARCH"] = saved
    ratios = [e / m for e, m in zip(times["exact"], times["mixed"])]
    blocks_mixed = stats_after[1] - stats_before[1]
    blocks_exact = stats_after[2] - stats_before[2]
    return {
        "exact_s": min(times["exact"]),
        "mixed_s": min(times["mixed"]),
        "speedup": min(times["exact"]) / min(times["mixed"]),
        "speedup_range": [min(ratios), max(ratios)],
        "bit_identical": identical,
        "fallback_fraction": blocks_exact / max(1, blocks_mixed + blocks_exact),
        "mixed_path_taken": (stats_after[0] - stats_before[0]) > 0,
    }


def run(threads: int, rounds: int = 3, min_round_s: float = 0.3, out_dir: Path | None = None,
        sizes=SIZES, dims=DIMS, ks=KS) -> dict:
    from . import machine

    torch.set_num_threads(threads)
    ext = eae_kernels._extension._C
    if ext is None or not ext.cpu_mixed_search_supported():
        raise SystemExit("--search-paths: this CPU (or build) has no mixed search (needs AVX-512 VNNI)")
    peak = machine.fma_peak(threads, 0.3)
    peak_g = peak.get("measured_gfma_s")
    load = [os.getloadavg()[0]]
    rows = []
    for n in sizes:
        for d in dims:
            z = gaussian(n, d, seed=n + d)
            for k in ks:
                rec = {"input": "gaussian", "N": n, "d": d, "k": k, **compare(z, k, rounds, min_round_s)}
                for path in ("exact", "mixed"):
                    rate = n * n * d / rec[f"{path}_s"] / 1e9
                    rec[f"{path}_gpc_s"] = rate
                    rec[f"{path}_of_fma_peak"] = rate / peak_g if peak_g else None
                rows.append(rec)
                print(line(rec), flush=True)
                load.append(os.getloadavg()[0])
    for name, z in adversarial_inputs(ADVERSARIAL_N):
        for k in ks:
            rec = {"input": name, "N": z.shape[0], "d": z.shape[1], "k": k, **compare(z, k, rounds, min_round_s)}
            rows.append(rec)
            print(line(rec), flush=True)
            load.append(os.getloadavg()[0])
    results = {
        "device_label": machine.device_label(torch.device("cpu")),
        "threads": threads,
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


def line(rec: dict) -> str:
    rate = f", {rec['mixed_gpc_s']:.0f} G pair-coords/s mixed" if "mixed_gpc_s" in rec else ""
    return (f"{rec['input']:32s} N={rec['N']:6d} d={rec['d']:4d} k={rec['k']}: exact {rec['exact_s'] * 1e3:8.1f} ms, "
            f"mixed {rec['mixed_s'] * 1e3:8.1f} ms, speedup {rec['speedup']:.2f}x "
            f"[{rec['speedup_range'][0]:.2f}, {rec['speedup_range'][1]:.2f}]{rate}, fallback "
            f"{rec['fallback_fraction']:.0%}, identical {rec['bit_identical']}")


def evaluate(rows: list) -> list:
    out = []
    for (n, d), need in TARGETS.items():
        got = [r["speedup"] for r in rows if r["input"] == "gaussian" and (r["N"], r["d"]) == (n, d)]
        if got:
            out.append({"target": f"mixed >= {need}x exact at N={n}, d={d} (k=1 and 5)",
                        "measured": ", ".join(f"{s:.2f}x" for s in got), "met": min(got) >= need})
    adv = [r["speedup"] for r in rows if r["input"] != "gaussian"]
    if adv:
        out.append({"target": f"adversarial inputs never slower than {ADVERSARIAL_MAX_SLOWDOWN}x exact",
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
        f"kl_entropy forward+backward, float32, fastest call of alternated rounds. Load average during the run: "
        f"{load['min']:.1f} - {load['max']:.1f}. Measured fp32 FMA peak: "
        + (f"{peak:.0f} GFMA/s." if peak else "not measured."),
        "",
        "| input | N | d | k | cpu exact | cpu mixed | speedup [range] | pair-coords/s exact, mixed (vs FMA peak) | fallback | bit-identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        rate = ""
        if "mixed_gpc_s" in r:
            rate = (f"{r['exact_gpc_s']:.0f} G ({r['exact_of_fma_peak']:.0%}), {r['mixed_gpc_s']:.0f} G "
                    f"({r['mixed_of_fma_peak']:.0%})" if peak else f"{r['exact_gpc_s']:.0f} G, {r['mixed_gpc_s']:.0f} G")
        out.append(
            f"| {r['input']} | {r['N']} | {r['d']} | {r['k']} | {r['exact_s'] * 1e3:.1f} ms | {r['mixed_s'] * 1e3:.1f} ms | "
            f"{r['speedup']:.2f}x [{r['speedup_range'][0]:.2f}, {r['speedup_range'][1]:.2f}] | {rate} | "
            f"{r['fallback_fraction']:.0%} | {'yes' if r['bit_identical'] else 'NO'} |"
        )
    out += ["", "Targets:", ""]
    out += [f"- [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['measured']}" for t in results["targets"]]
    return out
