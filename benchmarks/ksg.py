"""python -m benchmarks.ksg: the KSG mutual-information estimator against what users run today.

One run, CPU, writes ``benchmarks/results/ksg.md``:

* scikit-learn's ``mutual_info_regression`` (KSG algorithm 1 with KD-trees; one feature, the
  only setting where it computes the same quantity) at dx = dy = 1, N in {1,000, 10,000, 100,000};
* a KD-tree KSG (scipy's cKDTree, the paper's algorithm 1, the way NPEET and most research code
  write it) at dx = dy in {8, 64}, N in {1,000, 10,000, 100,000}; the KD-tree is O(N^2 d) in
  these dimensions, as is our tiled path, so a call runs only where it is predicted (from the
  previous N) to finish within ``--max-call-s``; the rest is marked "not run";
* B = 32 sets of N = 2,000 (dx = dy = 8) in one batched call against a Python loop of single calls.

Every estimate is checked against the baseline's value. Times are the best of a few repeats
(one repeat for calls over a few seconds), with 2 threads everywhere (torch, cKDTree workers,
BLAS/OpenMP via threadpoolctl). ``--quick`` stops at N = 10,000 (a few minutes).

    python -m benchmarks.ksg            # about 10 minutes on 2 cores
    python -m benchmarks.ksg --quick
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time
from pathlib import Path

# Threads that finish early sleep instead of spinning: on a shared, oversubscribed machine a
# spinning OpenMP thread steals the core its partner needs (measured here: the same call took
# 12-78 ms with spinning, 11 ms without). Applies to every library in the run alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from eae_kernels import ksg_mutual_information  # noqa: E402

RESULTS = Path(__file__).resolve().with_name("results") / "ksg.md"
THREADS = 2


def best_time(fn, budget_s: float = 3.0, max_repeats: int = 5):
    """(best seconds, last value) of up to max_repeats calls, stopping once budget_s is spent."""
    times, value, spent = [], None, 0.0
    while len(times) < max_repeats and (not times or spent + times[-1] < budget_s):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times), value


def correlated(n: int, d: int, rho: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, rho * x + math.sqrt(1 - rho * rho) * rng.standard_normal((n, d))


def kdtree_ksg(x: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """KSG algorithm 1 with scipy's cKDTree (float64), as research code writes it."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    n = len(x)
    xy = np.hstack([x, y])
    dist, _ = cKDTree(xy).query(xy, k=k + 1, p=np.inf, workers=THREADS)
    r = np.nextafter(dist[:, k], 0)  # strict < eps_i; query_ball_point counts <= r
    nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True, workers=THREADS) - 1
    ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True, workers=THREADS) - 1
    return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))


def ours(x: np.ndarray, y: np.ndarray, dtype=torch.float64, k: int = 3):
    xt, yt = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
    return lambda: float(ksg_mutual_information(xt, yt, k))


def fmt_s(t):
    if t is None:
        return "not run"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def sklearn_rows(sizes, log):
    from sklearn.feature_selection import mutual_info_regression

    rows = []
    for n in sizes:
        x, y = correlated(n, 1)
        t_sk, v_sk = best_time(lambda: float(mutual_info_regression(x, y[:, 0], n_neighbors=3, random_state=0)[0]))
        t64, v64 = best_time(ours(x, y))
        t32, _ = best_time(ours(x, y, torch.float32))
        rows.append((n, t_sk, t64, t32, v_sk, v64))
        log(f"sklearn d=1 N={n}: sklearn {fmt_s(t_sk)} ours f64 {fmt_s(t64)} f32 {fmt_s(t32)}  I {v_sk:.4f} / {v64:.4f}")
    return rows


class Predicted:
    """Runs a call only when its time, predicted from the last run at a smaller N by the
    O(N^2) scaling of every method here, stays under max_s."""

    def __init__(self, max_s):
        self.max_s, self.last = max_s, None

    def run(self, n, fn):
        if self.last is not None and self.last[0] * (n / self.last[1]) ** 2 > self.max_s:
            return None, None
        t, v = best_time(fn, budget_s=self.max_s / 4)
        self.last = (t, n)
        return t, v


def kdtree_rows(dims, sizes, max_s, log):
    rows = []
    for d in dims:
        kd, f64, f32 = Predicted(max_s), Predicted(max_s), Predicted(max_s)
        for n in sizes:
            x, y = correlated(n, d)
            t_kd, v_kd = kd.run(n, lambda: kdtree_ksg(x, y))
            t64, v64 = f64.run(n, ours(x, y))
            t32, _ = f32.run(n, ours(x, y, torch.float32))
            if v_kd is not None and v64 is not None:
                assert abs(v_kd - v64) < 1e-9, (d, n, v_kd, v64)
            rows.append((d, n, t_kd, t64, t32))
            log(f"kd-tree d={d} N={n}: kd {fmt_s(t_kd)} ours f64 {fmt_s(t64)} f32 {fmt_s(t32)}")
    return rows


def batched_row(b, n, d, log):
    xs, ys = zip(*(correlated(n, d, seed=s) for s in range(b)))
    xb = torch.from_numpy(np.stack(xs)).float()
    yb = torch.from_numpy(np.stack(ys)).float()
    t_batch, vb = best_time(lambda: ksg_mutual_information(xb, yb))
    t_loop, vl = best_time(lambda: torch.stack([ksg_mutual_information(xb[i], yb[i]) for i in range(b)]))
    assert torch.equal(vb, vl)
    log(f"batched B={b} N={n} d={d}: batched {fmt_s(t_batch)} loop {fmt_s(t_loop)}")
    return t_batch, t_loop


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {THREADS} threads; torch {torch.__version__}"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N up to 10,000 only")
    parser.add_argument("--sizes", type=int, nargs="+", help="N values (default 1,000 10,000 100,000)")
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 64], help="dx = dy of the KD-tree rows")
    parser.add_argument("--batch", type=int, nargs=3, default=[32, 2000, 8], metavar=("B", "N", "D"),
                        help="the batched row: B sets of N rows, dx = dy = D")
    parser.add_argument("--max-call-s", type=float, default=240.0, help="skip calls predicted to take longer")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(THREADS)
    sizes = tuple(args.sizes or ((1000, 10000) if args.quick else (1000, 10000, 100000)))
    log = lambda s: print(s, flush=True)  # noqa: E731
    load_before = loadavg()
    started = time.time()
    with threadpool_limits(THREADS):
        sk = sklearn_rows(sizes, log)
        kd = kdtree_rows(tuple(args.dims), sizes, args.max_call_s, log)
        t_batch, t_loop = batched_row(*args.batch, log)

    lines = [
        "# KSG mutual information: benchmark (`python -m benchmarks.ksg`)",
        "",
        f"{datetime.date.today()}, {machine()}. Load average before / after: {load_before} / {loadavg()} "
        f"(a shared machine: compare the ratios, measured in the same run). Total {time.time() - started:.0f} s.",
        "Best of up to 5 calls (1 for calls over a few seconds); k = 3, algorithm 1; x, y correlated Gaussians (rho = 0.5 per coordinate pair).",
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} (threads that finish early sleep instead of spinning; set for every library in the run).",
        "",
        "## dx = dy = 1: against scikit-learn `mutual_info_regression` (one feature)",
        "",
        "scikit-learn rescales the data and adds 1e-10-scale noise, so its value differs slightly from the exact estimate.",
        "",
        "| N | scikit-learn | ours float64 | ours float32 | speed-up (float64) | I scikit-learn | I ours |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t_sk, t64, t32, v_sk, v64 in sk:
        lines.append(f"| {n:,} | {fmt_s(t_sk)} | {fmt_s(t64)} | {fmt_s(t32)} | {t_sk / t64:.1f}x | {v_sk:.4f} | {v64:.4f} |")
    lines += [
        "",
        f"## dx = dy in {{{', '.join(map(str, args.dims))}}}: against a KD-tree KSG (scipy cKDTree, float64, 2 workers)",
        "",
        f"Values equal to 1e-9 wherever both ran in float64. A method runs only where its call is predicted (from the previous N, O(N^2) scaling) under {args.max_call_s:.0f} s; \"not run\" marks the rest.",
        "",
        "| d | N | KD-tree | ours float64 | ours float32 | speed-up (float64) | speed-up (float32) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d, n, t_kd, t64, t32 in kd:
        s64 = f"{t_kd / t64:.0f}x" if t_kd and t64 else "-"
        s32 = f"{t_kd / t32:.0f}x" if t_kd and t32 else "-"
        lines.append(f"| {d} | {n:,} | {fmt_s(t_kd)} | {fmt_s(t64)} | {fmt_s(t32)} | {s64} | {s32} |")
    lines += [
        "",
        f"## Batched: B = {args.batch[0]} sets of N = {args.batch[1]:,}, dx = dy = {args.batch[2]}, float32",
        "",
        f"| one batched call | Python loop of {args.batch[0]} calls | speed-up |",
        "|---:|---:|---:|",
        f"| {fmt_s(t_batch)} | {fmt_s(t_loop)} | {t_loop / t_batch:.2f}x |",
        "",
        "The batched call runs the sets one after the other inside the op (each threaded over its rows), so it saves only",
        "the per-call overhead; a batched k-NN search would run pass 1 for all sets at once.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
