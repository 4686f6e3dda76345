"""python -m benchmarks.run: how much faster, and how much less memory, than what a user would
write or install instead?

Measures, on this machine's device, every backend of eae-kernels and every baseline (the naive
reference, torch.compile of it, pykeops, faiss) on the same inputs: forward time, forward+backward
time, peak extra memory and speedup vs the reference, over N x d x k, each result checked against
the reference. Writes ``benchmarks/results/<device>.json``, ``<device>.md`` (tables and the
performance targets) and two plots ``<device>_time.png``, ``<device>_memory.png``.

    python -m benchmarks.run                 # full sweep (CPU: 8.7 min on a quiet 2-core machine)
    python -m benchmarks.run --quick         # about a minute: N in {100, 1024, 4096}, d=64, k=1
    python -m benchmarks.run --device cuda   # GPU backends and baselines (N up to 1,000,000)
    python -m benchmarks.run --methods ours reference --sizes 1024 4096 --dims 64 --ks 1

The estimator rows (kl_divergence vs the naive cdist version, koleo_loss vs DINOv2's formula,
B=64 sets of N=100 in one call vs a loop; benchmarks/estimators.py) follow the sweep; add
--no-estimators to skip them.

Cases that would not fit in memory (predicted from the same method at the previous N, scaled by
N^2 for O(N^2)-memory methods) are recorded as OOM without being run, and cases predicted to take
over ``--max-call-s`` per call are skipped, so the sweep never thrashes a shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().with_name("results")
SIZES = (100, 256, 1024, 4096, 16384, 65536)
GPU_EXTRA_SIZES = (262144, 1_000_000)
DIMS = (16, 64, 128)
KS = (1, 5)
QUICK = {"sizes": (100, 1024, 4096), "dims": (64,), "ks": (1,), "target_s": 0.3, "fma_seconds": 0.2}
WARM_UP_SHAPE = (64, 8)  # every method runs once on this before the sweep (loads, allocates pools)
REFERENCE_BYTES_PER_N2 = 20  # reference fwd+bwd holds ~4.5 float32 N x N matrices (measured)


@dataclass
class Settings:
    device: str = "cpu"
    sizes: tuple = SIZES
    dims: tuple = DIMS
    ks: tuple = KS
    methods: tuple = ()  # --methods keys; empty: all of benchmarks.methods.METHOD_KEYS
    threads: int = 2  # CPU threads (torch, OpenMP, faiss)
    target_s: float = 1.0  # time spent on the timed repeats of one measurement
    max_call_s: float = 30.0  # skip a case predicted to take longer per call (keeps the 2-core CPU sweep under 10 min)
    memory_budget_bytes: int = 0  # skip (as OOM) a case predicted to need more; 0: 60% of what is free
    seed: int = 0
    quick: bool = False
    fma_seconds: float = 0.5  # per run of the FMA peak measurement
    fresh_keops_cache: bool = True  # compile KeOps formulas afresh, so their compile time is real
    estimators: bool = True  # also the estimator rows (benchmarks/estimators.py)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def configure_threads(threads: int) -> dict:
    """The same thread count for torch, for OpenMP runtimes loaded later (KeOps) and for faiss.
    Returns the previous settings, for ``restore_threads``."""
    import torch

    before = {"env": os.environ.get("OMP_NUM_THREADS"), "torch": torch.get_num_threads(), "faiss": None}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    try:
        import faiss

        before["faiss"] = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    return before


def restore_threads(before: dict) -> None:
    import torch

    if before["env"] is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before["env"]
    torch.set_num_threads(before["torch"])
    if before["faiss"] is not None:
        import faiss

        faiss.omp_set_num_threads(before["faiss"])


def fresh_keops_folder() -> str:
    """An empty folder for KeOps to compile into, so that its compile time is measured, not a
    load from its cache. The same folder every run (emptied here): KeOps writes its index files
    into it at interpreter exit, so it must outlive the sweep."""
    folder = Path(tempfile.gettempdir()) / "eae-kernels-bench-keops"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder)


def make_input(n: int, d: int, seed: int, device):
    """The (N, d) float32 standard-normal input every method gets for this (N, d)."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + n * 1_009 + d)
    return torch.randn(n, d, generator=gen).to(device)


# ---------------------------------------------------------------------------------------------
# One method on one case
# ---------------------------------------------------------------------------------------------


class Sweep:
    """Runs the methods over the cases, remembering what it needs to predict the next size."""

    def __init__(self, settings: Settings, methods: list, progress=None):
        import torch

        from . import memory
        from .timing import Clock

        self.s = settings
        self.device = torch.device(settings.device)
        self.methods = methods
        self.clock = Clock(self.device)
        self.probe = None
        reason = memory.cpu_unsupported_reason() if self.device.type == "cpu" else None
        if reason is None:
            self.probe = lambda call: memory.peak_extra_bytes(call, self.device)
        self.memory_unsupported = reason
        self.last: dict = {}  # (method, d, k) -> record at the largest N so far
        self.broken: dict = {}  # method -> why it stopped being run
        self.records: list = []
        self.progress = progress

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.write(text)
        else:
            print(text, file=sys.stderr)

    # -- predictions ---------------------------------------------------------------------------

    def predict(self, method, n: int, d: int, k: int) -> tuple:
        """(seconds per call, peak bytes) expected at N=n from the previous size, or None each."""
        prev = self.last.get((method.name, d, k))
        if prev is None:
            analytic = REFERENCE_BYTES_PER_N2 * n * n if method.memory_order == 2 else None
            return None, analytic
        scale = n / prev["N"]
        if prev["status"] == "ok":
            base_s = max(p["median_s"] for p in (prev["fwd"], prev["fwd_bwd"]) if p)
            peaks = [p["peak_bytes"] for p in (prev["fwd"], prev["fwd_bwd"]) if p and p.get("peak_bytes")]
            base_b = max(peaks) if peaks else None
        else:
            base_s, base_b = prev.get("predicted_s"), prev.get("predicted_bytes")
        pred_s = base_s * scale**2 if base_s else None  # every method does O(N^2 d) work
        pred_b = base_b * scale**method.memory_order if base_b else None
        if pred_b is None and method.memory_order == 2:
            pred_b = REFERENCE_BYTES_PER_N2 * n * n
        return pred_s, pred_b

    # -- running -------------------------------------------------------------------------------

    def run_case(self, method, z, k: int, truth: dict) -> dict:
        from .report import fmt_bytes

        n, d = z.shape
        rec = {"method": method.name, "key": method.key, "N": n, "d": d, "k": k, "status": "ok", "reason": None,
               "fwd": None, "fwd_bwd": None, "compile_s": None, "check": None,
               "load_average": os.getloadavg()[0]}  # > threads: other work competed for the cores
        if method.unavailable:
            return {**rec, "status": "skipped", "reason": method.unavailable}
        if method.name in self.broken:
            return {**rec, "status": "skipped", "reason": self.broken[method.name]}
        pred_s, pred_b = self.predict(method, n, d, k)
        rec.update(predicted_s=pred_s, predicted_bytes=pred_b)
        budget = self.s.memory_budget_bytes
        if pred_b is not None and pred_b > budget:
            why = f"needs ~{fmt_bytes(pred_b)} > {fmt_bytes(budget)} budget: predicted, not run"
            return {**rec, "status": "oom", "reason": why}
        if pred_s is not None and pred_s > self.s.max_call_s:
            why = f"predicted ~{pred_s:.0f} s per call > {self.s.max_call_s:g} s limit"
            return {**rec, "status": "skipped", "reason": why}
        try:
            out = self._measure(method, z, k, rec)
            self._check(method, z, k, rec, out, truth)
        except Exception as exc:  # noqa: BLE001  (a failing baseline is a result, not a crash)
            from .memory import is_out_of_memory

            self._free()
            if is_out_of_memory(exc):
                return {**rec, "status": "oom", "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
            self.broken[method.name] = f"failed at N={n}, d={d}, k={k}: {type(exc).__name__}: {str(exc)[:200]}"
            return {**rec, "status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
        return rec

    def _measure(self, method, z, k: int, rec: dict) -> dict:
        """Time forward and forward+backward into ``rec``; returns the last outputs: 'fwd' (H,
        or the k-th distances of a forward-only method), 'h' and 'grad' (forward+backward)."""
        import torch

        from .timing import measure

        out: dict = {}

        def forward():
            with torch.no_grad():
                out["fwd"] = method.run(z, k)

        timing = dict(target_s=self.s.target_s, compiles=method.compiles, memory_probe=self.probe)
        fwd = measure(forward, self.clock, **timing)
        rec["fwd"] = fwd.as_dict()
        compile_s = fwd.first_s - fwd.median_s
        if not method.forward_only:
            zg = z.detach().clone().requires_grad_(True)

            def forward_backward():
                zg.grad = None
                h = method.run(zg, k)
                h.backward()
                out["h"] = h.detach()

            fwd_bwd = measure(forward_backward, self.clock, **timing)
            rec["fwd_bwd"] = fwd_bwd.as_dict()
            compile_s += fwd_bwd.first_s - fwd_bwd.median_s
            out["grad"] = zg.grad
        if method.compiles:
            rec["compile_s"] = max(0.0, compile_s)
        return out

    def _check(self, method, z, k: int, rec: dict, out: dict, truth: dict) -> None:
        """Compare ``out`` with the reference's result on the same case (``truth``, filled by
        the reference's own run, which comes first, or computed here when it is needed)."""
        from . import checks

        if method.key == "reference":
            truth.update(h_fwd=out["fwd"], h=out["h"], grad=out["grad"])
            rec["check"] = {"ok": None, "detail": "is the reference"}
            return
        if method.forward_only:
            ref = self.truth_distances(z, k, truth)
            if ref is None:
                rec["check"] = {"ok": None, "detail": truth["why_no_kth"]}
                return
            rec["check"] = checks.check_distances(out["fwd"], ref).as_dict()
            return
        if not self.truth_kl(z, k, truth):
            rec["check"] = {"ok": None, "detail": truth["why_no_kl"]}
            return
        fwd = checks.check_kl(out["fwd"], None, truth["h_fwd"], None)
        both = checks.check_kl(out["h"], out["grad"], truth["h"], truth["grad"])
        ok = fwd.ok and both.ok
        rec["check"] = {"ok": ok, "detail": both.detail + ("" if fwd.ok else f"; forward only: {fwd.detail}")}

    def _fits(self, bytes_needed: float, truth: dict, why_key: str) -> bool:
        """Whether a reference computation of ``bytes_needed`` fits the budget (else says why)."""
        from .report import fmt_bytes

        if bytes_needed > self.s.memory_budget_bytes:
            truth[why_key] = f"not checked: the reference needs ~{fmt_bytes(bytes_needed)} (over budget)"
            return False
        return True

    def truth_kl(self, z, k: int, truth: dict) -> bool:
        """Make sure ``truth`` holds the reference's H and gradient (from its timed run, or
        computed here, untimed, when the reference is not among the timed methods)."""
        if "h" in truth:
            return True
        if "why_no_kl" in truth:
            return False
        case = (z.shape[0], z.shape[1], k)
        ref = next((r for r in self.records if r["key"] == "reference" and (r["N"], r["d"], r["k"]) == case), None)
        if ref is not None and ref["status"] != "ok":
            truth["why_no_kl"] = f"not checked: the reference did not run ({ref['status']})"
            return False
        if not self._fits(REFERENCE_BYTES_PER_N2 * z.shape[0] ** 2, truth, "why_no_kl"):
            return False
        import torch

        from eae_kernels import reference

        with torch.no_grad():
            truth["h_fwd"] = reference.kl_entropy(z, k)
        zg = z.detach().clone().requires_grad_(True)
        h = reference.kl_entropy(zg, k)
        h.backward()
        truth.update(h=h.detach(), grad=zg.grad)
        return True

    def truth_distances(self, z, k: int, truth: dict):
        """The reference's k-th neighbour distances (computed once per case, untimed)."""
        if "kth" not in truth:
            if "why_no_kth" in truth or not self._fits(3 * 4 * z.shape[0] ** 2, truth, "why_no_kth"):
                return None
            from .checks import reference_kth_distances

            truth["kth"] = reference_kth_distances(z, k)
        return truth["kth"]

    def _free(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self) -> None:
        """Run every method once on a tiny input: loads libraries and builds thread pools, so
        that none of it lands in the first measured case. A method that fails here is skipped in
        every case, with the reason."""
        import torch

        z = make_input(*WARM_UP_SHAPE, self.s.seed, self.device)
        for method in self.methods:
            if method.unavailable or method.compiles:
                continue  # compiling methods get two warm-up calls in every case anyway
            try:
                with torch.no_grad():
                    method.run(z, 1)
                if not method.forward_only:
                    zg = z.clone().requires_grad_(True)
                    method.run(zg, 1).backward()
            except Exception as exc:  # noqa: BLE001
                why = f"{type(exc).__name__}: {str(exc)[:200]}"
                self.broken[method.name] = f"failed on the warm-up input {WARM_UP_SHAPE}: {why}"

    def run(self) -> list:
        order = sorted(self.methods, key=lambda m: m.key != "reference")  # the reference first: it is the truth
        for n in sorted(self.s.sizes):
            for d in self.s.dims:
                z = make_input(n, d, self.s.seed, self.device)
                for k in self.s.ks:
                    truth: dict = {}
                    for method in order:
                        if self.progress is not None:
                            self.progress.set_description(f"N={n} d={d} k={k} {method.name}")
                        started = time.perf_counter()
                        rec = self.run_case(method, z, k, truth)
                        rec["wall_s"] = time.perf_counter() - started  # all calls and checks of this case
                        self.records.append(rec)
                        self.last[(method.name, d, k)] = rec
                        if not method.unavailable:
                            self.log(one_line(rec, self.records))
                        if self.progress is not None:
                            self.progress.update(1)
                    del truth
                    self._free()
        return self.records


def one_line(rec: dict, records: list) -> str:
    """A progress line for one finished record."""
    from .report import REFERENCE, find, fmt_bytes, fmt_speedup, fmt_time, median, status_text

    head = f"N={rec['N']:>7} d={rec['d']:>3} k={rec['k']}  {rec['method']:<26}"
    if rec["status"] != "ok":
        return head + status_text(rec)
    ref = find(records, REFERENCE, rec["N"], rec["d"], rec["k"])
    parts = []
    for phase, label in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
        t = median(rec, phase)
        if t is not None:
            speedup = median(ref, phase) / t if median(ref, phase) and rec["method"] != REFERENCE else None
            parts.append(f"{label} {fmt_time(t)}" + (f" ({fmt_speedup(speedup)})" if speedup else ""))
    main = rec["fwd_bwd"] or rec["fwd"]
    parts.append(f"mem {fmt_bytes(main.get('peak_bytes'))}")
    if rec.get("compile_s") is not None:
        parts.append(f"compile {rec['compile_s']:.1f} s")
    check = rec.get("check") or {}
    if check.get("ok") is None:
        parts.append(check.get("detail") or "unchecked")
    else:
        parts.append("check ok" if check["ok"] else f"CHECK FAILED ({check['detail']})")
    return head + "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------


def run_sweep(settings: Settings, *, progress: bool = True, command: str = "") -> dict:
    """Measure everything ``settings`` asks for; returns the results dict (see benchmarks.report)."""
    before = configure_threads(settings.threads)
    try:
        return _run_sweep(settings, progress, command)
    finally:
        restore_threads(before)


def _run_sweep(settings: Settings, progress: bool, command: str) -> dict:
    import torch

    from . import machine, memory, report
    from .methods import METHOD_KEYS, all_methods

    device = torch.device(settings.device)
    if not settings.memory_budget_bytes:
        settings.memory_budget_bytes = int(0.6 * memory.available_bytes(device))
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * settings.threads:
        print(f"WARNING: the machine is busy (load average {load_before:.1f} for {settings.threads} threads): "
              "timings will be noisy; run on a quiet machine for numbers to publish", file=sys.stderr)
    keys = settings.methods or METHOD_KEYS
    methods = all_methods(device, keys, fresh_keops_folder() if settings.fresh_keops_cache else None)
    print(
        f"device {device} ({machine.device_label(device)}); torch.set_num_threads({torch.get_num_threads()}); "
        f"memory budget {report.fmt_bytes(settings.memory_budget_bytes)}",
        file=sys.stderr,
    )
    for m in methods:
        if m.unavailable:
            print(f"  {m.name}: skipped, {m.unavailable}", file=sys.stderr)
    peak = machine.fma_peak(settings.threads, settings.fma_seconds) if device.type == "cpu" else None
    total = len(settings.sizes) * len(settings.dims) * len(settings.ks) * len(methods)
    bar = None
    if progress:
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (the per-case lines still show progress)
        bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True, disable=None)
    sweep = Sweep(settings, methods, bar)
    try:
        sweep.warm_up()
        sweep.run()
    finally:
        if bar is not None:
            bar.close()
    order = {m.name: i for i, m in enumerate(methods)}
    records = sorted(sweep.records, key=lambda r: (r["N"], r["d"], r["k"], order[r["method"]]))
    notes_gpu = " (GPU: allocations outside torch's allocator are not counted)"
    results = {
        "schema": 1,
        "device_label": machine.device_label(device),
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "settings": {**asdict(settings), "sizes": sorted(settings.sizes)},
        "machine": machine.describe(device, settings.threads),
        "fma_peak": peak,
        "memory_measurement": (
            f"not measured: {sweep.memory_unsupported}" if sweep.memory_unsupported
            else "resident-set high-water mark (VmHWM)" if device.type == "cpu" else "torch.cuda.max_memory_allocated"
        ),
        "methods": {
            m.name: {
                "key": m.key,
                "available": m.unavailable is None,
                "unavailable": m.unavailable,
                "is_ours": m.is_ours,
                "forward_only": m.forward_only,
                "memory_order": m.memory_order,
                "compiles": m.compiles,
                "note": m.note + (notes_gpu if device.type == "cuda" and m.key in ("pykeops", "faiss") else ""),
            }
            for m in methods
        },
        "records": records,
    }
    report.add_speedups(records)
    results["targets"] = report.evaluate_targets(results)
    if settings.estimators:
        from . import estimators

        print("estimators (forward+backward vs the user's alternative):", file=sys.stderr)
        results["estimators"] = estimators.run(
            device, settings.target_s, settings.quick, progress=lambda line: print(line, file=sys.stderr)
        )
        results["targets"] += results["estimators"]["targets"]
    return results


def write_outputs(results: dict, out_dir: Path, stem: str, with_plots: bool = True) -> dict:
    from . import report

    paths = report.write(results, out_dir, stem)
    if with_plots:
        from . import plot

        paths.update(plot.plot(results, out_dir, stem))
    return paths


def parse_args(argv=None) -> tuple:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a one-minute subset: N in {100, 1024, 4096}, d=64, k=1")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    p.add_argument("--sizes", type=int, nargs="+",
                   help="values of N (default: 100 ... 65536; GPU also 262144, 1000000)")
    p.add_argument("--dims", type=int, nargs="+", help=f"values of d (default: {' '.join(map(str, DIMS))})")
    p.add_argument("--ks", type=int, nargs="+", help=f"values of k (default: {' '.join(map(str, KS))})")
    p.add_argument("--methods", nargs="+", choices=("ours", "reference", "compile", "pykeops", "faiss"),
                   help="default: all")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default, at most the cores)")
    p.add_argument("--target-s", type=float, help="seconds spent on the timed repeats of one measurement (default 1)")
    p.add_argument("--max-call-s", type=float, default=30.0,
                   help="skip cases predicted to take longer per call (default 30)")
    p.add_argument("--memory-budget-gb", type=float,
                   help="skip (as OOM) cases predicted to need more (default: 60%% of free memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keops-cache", action="store_true", help="reuse KeOps' compiled formulas from its disk cache")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="default: benchmarks/results")
    p.add_argument("--name", help="output file stem (default: the device, '-quick' for --quick)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--search-paths", action="store_true",
                   help="instead of the sweep: the CPU's exact vs mixed neighbour search (benchmarks/search_paths.py)")
    p.add_argument("--no-estimators", action="store_true",
                   help="skip the estimator rows (kl_divergence, koleo_loss, batched sets; benchmarks/estimators.py)")
    args = p.parse_args(argv)
    for flag in ("sizes", "dims", "ks"):
        values = getattr(args, flag) or []
        if any(v < 1 for v in values):
            p.error(f"--{flag} takes positive integers; got {values}")
    for flag in ("threads", "target_s", "max_call_s", "memory_budget_gb"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive; got {value}")
    return p, args


def settings_from_args(args) -> Settings:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no CUDA device")
    s = Settings(device=device)
    s.sizes = SIZES + (GPU_EXTRA_SIZES if device == "cuda" else ())
    if args.quick:
        s.quick = True
        s.sizes, s.dims, s.ks = QUICK["sizes"], QUICK["dims"], QUICK["ks"]
        s.target_s, s.fma_seconds = QUICK["target_s"], QUICK["fma_seconds"]
        s.fresh_keops_cache = False
    s.sizes = tuple(args.sizes or s.sizes)
    s.dims = tuple(args.dims or s.dims)
    s.ks = tuple(args.ks or s.ks)
    s.methods = tuple(args.methods or ())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    s.threads = args.threads or min(torch.get_num_threads(), cores)
    s.target_s = args.target_s or s.target_s
    s.max_call_s = args.max_call_s
    s.memory_budget_bytes = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else 0
    s.seed = args.seed
    s.fresh_keops_cache = s.fresh_keops_cache and not args.keops_cache
    s.estimators = not args.no_estimators
    if any(k >= min(s.sizes) for k in s.ks):
        raise SystemExit(f"every k must be below the smallest N; got k={s.ks}, N={s.sizes}")
    return s


def main(argv=None) -> int:
    _, args = parse_args(argv)
    if args.threads:  # before torch starts its thread pools
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    settings = settings_from_args(args)
    if args.search_paths:
        return run_search_paths(settings, args)
    command = "python -m benchmarks.run" + "".join(" " + a for a in (sys.argv[1:] if argv is None else argv))
    results = run_sweep(settings, command=command)
    stem = args.name or (settings.device + ("-quick" if settings.quick else ""))
    paths = write_outputs(results, args.out_dir, stem, with_plots=not args.no_plot)

    from . import report

    d = 64 if 64 in settings.dims else settings.dims[0]
    print(f"\nForward+backward, d={d}, k={settings.ks[0]} (speedup vs reference):\n")
    print("\n".join(report.headline_table(results, d, settings.ks[0])))
    print("\nTargets:")
    for t in results["targets"]:
        print(f"  [{ {True: 'met', False: 'MISSED', None: 'n/a'}[t['met']] }] {t['target']}: {t['measured']}")
    failed = [r for r in results["records"] if (r.get("check") or {}).get("ok") is False]
    if failed:
        print(f"\n{len(failed)} results DISAGREE with the reference:")
        for r in failed:
            print(f"  {r['method']} N={r['N']} d={r['d']} k={r['k']}: {r['check']['detail']}")
    print(f"\nWrote {', '.join(str(p) for p in paths.values())} in {results['duration_s'] / 60:.1f} min")
    return 1 if failed else 0


def run_search_paths(settings: Settings, args) -> int:
    """Rows "cpu exact" and "cpu mixed" (EAE_KERNELS_SEARCH) measured alternately in one run."""
    from . import search_paths

    kwargs = {key: tuple(getattr(args, key)) for key in ("sizes", "dims", "ks") if getattr(args, key)}
    results = search_paths.run(settings.threads, out_dir=args.out_dir, **kwargs)
    print("\n".join(search_paths.markdown(results)))
    return 0 if all(r["bit_identical"] for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
