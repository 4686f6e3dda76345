#!/usr/bin/env bash
# The GPU check of the CUDA and Triton backends: ONE script for a session that has a GPU machine
# (an H100 with torch + CUDA toolkit, no network). Under 8 minutes:
#
#   1. build eae_kernels._C in place with its CUDA kernels (sm_90 only, to save time)    ~1.5 min
#   1b. python -m eae_kernels.selfcheck: every GPU backend against the CPU kernel, every path  <= 4 min
#   2. pytest tests/test_cuda.py (the CUDA-specific checks)                               ~1 min
#   2b. the estimator family on CUDA (kl_entropy_sets, kl_cross_entropy, kl_divergence, koleo,
#       knn_sets): against the CPU op, and fwd+bwd timing of the batched shapes and KoLeo  <= 60 s
#   3. GPU timing: cuda, triton and reference, forward and forward+backward, float32, k=1,
#      d=64, N in {100, 1024, 16384, 65536}; the design targets (N=65536 with d=128 as a fraction
#      of fp32 peak); the CUDA tile/path variants; a CUDA-graph replay at N=100; and the scale
#      run N=1,000,000, d=64 with its peak memory                                         ~2 min
#      and the Triton search paths (EAE_KERNELS_SEARCH=exact|mixed) at N=65536, d=128, bit-identity
#   3b. scripts/gpu_triton_check.py: Triton kernel count, CUDA graph, small/tiled crossover (<= 90 s)
#   3c. scripts/gpu_triton_sets_check.py: the Triton ops on batches of sets (batched entropy, ragged
#      divergence and cross-entropy, koleo_loss, cross-set knn) against the CPU op, and timed
#      against a loop of single-set calls, the dense reference, the DINOv2 formula, cdist + topk;
#      then pytest tests/test_triton_estimators.py                                        <= 5 min
#   4. pytest -x tests (the whole suite, CUDA cases included) with the time that is left
#
# Usage (from the repository root):  OUT=/some/dir bash scripts/gpu_check.sh
# Everything it prints is also written under $OUT: build.log, test_cuda.log, bench.log,
# bench.json, bench.md, sets_bench.log, triton_check.log, triton_sets.log, test_triton_sets.log,
# tests.log and summary.txt (what passed, what failed).
# GPU_CHECK_DRY=1 rehearses the script without a GPU (no build, no tests; the self-check on the
# Triton interpreter, the timing harness on the CPU backend at small N), so that a mistake in it
# does not cost GPU time.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
START=$(date +%s)
BUDGET_S="${GPU_CHECK_BUDGET_S:-460}"  # stop starting new steps after this many seconds
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

DRY="${GPU_CHECK_DRY:-0}"
export GPU_CHECK_DRY="$DRY"

elapsed() { echo $(($(date +%s) - START)); }
note() { echo "$*" | tee -a "$SUMMARY"; }
left() { local s=$((BUDGET_S - $(elapsed))); echo $((s > 1 ? s : 1)); }

note "== gpu_check $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 || true
  "$PY" -c "import pytest; print('pytest', pytest.__version__)" 2>&1 || true
  command -v nvcc && nvcc --version | tail -1; } 2>&1 | tee "$OUT/env.txt"

# ---- 1. Build in place ------------------------------------------------------------------------
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY" = 1 ]; then
  note "dry run: no build, no tests"
elif rm -f eae_kernels/_C*.so && timeout 300 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  note "build: ok ($(elapsed) s)"
else
  note "build: FAILED (see build.log; last lines below)"
  tail -40 "$OUT/build.log" | tee -a "$SUMMARY"
  exit 1
fi
if [ "$DRY" != 1 ]; then
  "$PY" -c "import eae_kernels._C as c; assert c.with_cuda, 'built without CUDA kernels'; print('with_cuda', c.with_cuda)" \
    2>&1 | tee -a "$SUMMARY" || exit 1
fi

# ---- 1b. The self-check: every GPU backend against the CPU kernel (dry: Triton's interpreter) --
if [ "$DRY" = 1 ]; then
  timeout "$(left)" env TRITON_INTERPRET=1 "$PY" -m eae_kernels.selfcheck --device cpu >"$OUT/selfcheck.log" 2>&1
else
  # Triton compiles and autotunes each case's shape class on first use: about 1-2 min (estimated)
  timeout 240 "$PY" -m eae_kernels.selfcheck --device cuda:0 >"$OUT/selfcheck.log" 2>&1
fi
note "selfcheck: exit $? ($(elapsed) s): $(tail -2 "$OUT/selfcheck.log" | head -1)"
cat "$OUT/selfcheck.log"

# ---- 2. The CUDA-specific tests ---------------------------------------------------------------
if [ "$DRY" != 1 ]; then
  timeout "$(left)" "$PY" -m pytest -q -x tests/test_cuda.py -p no:cacheprovider >"$OUT/test_cuda.log" 2>&1
  note "tests/test_cuda.py: exit $? ($(elapsed) s): $(tail -1 "$OUT/test_cuda.log")"
fi

# ---- 2b. The estimator family on CUDA: correctness spot check and timing (<= 60 s) -------------
# kl_entropy_sets / kl_cross_entropy / kl_divergence / koleo / knn_sets against the CPU op on the
# same data (neighbours exactly, values and gradients to rounding), then forward+backward ms for
# the batched EAE shape (B=64 sets of N=100, d=16), many sets of 1024 (the one-launch path), one
# large set (two launches), and KoLeo at B in {1024, 4096}, d=768, against a loop of single-set
# calls and the DINOv2 formula. Dry run: the CPU op stands in for the CUDA one, tiny shapes.
timeout "$(( $(left) < 60 ? $(left) : 60 ))" "$PY" - >"$OUT/sets_bench.log" 2>&1 <<'PYEOF'
import os, statistics, time

import torch

import eae_kernels

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
dev = torch.device("cpu" if DRY else "cuda")
OP = torch.ops.eae_kernels
EPS = 1e-8
failures = 0


def sync():
    if not DRY:
        torch.cuda.synchronize()


def per_call_ms(fn, reps):
    fn()
    sync()
    loops = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        loops.append((time.perf_counter() - t0) * 1e3 / reps)
    return statistics.median(loops)


def sets(b, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, d, generator=g).to(dev)


def check(name, run, args, exact=()):
    """run(*args) on the device against run(*args on the CPU): exact outputs bit for bit, the others
    to rounding. An exception counts as a failure (and the harness goes on)."""
    global failures
    try:
        got = run(*args)
        want = run(*[a.cpu() if isinstance(a, torch.Tensor) else a for a in args])
    except Exception as exc:
        failures += 1
        print(f"  {name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
        return
    bad = []
    for i, (a, c) in enumerate(zip(got, want)):
        a = a.cpu()
        if i in exact:
            ok = torch.equal(a, c)
        else:
            scale = max(1.0, c.abs().nan_to_num(0, 0, 0).max().item()) if c.numel() else 1.0
            ok = a.shape == c.shape and bool(torch.allclose(a, c, rtol=1e-5, atol=1e-5 * scale, equal_nan=True))
        if not ok:
            bad.append(i)
    failures += bool(bad)
    print(f"  {name}: {'ok' if not bad else 'MISMATCH in outputs ' + str(bad)}", flush=True)


print("Correctness against the CPU op (float32, ragged lengths):")
x, y = sets(4, 200, 8, 1), sets(4, 150, 8, 2)
lx = torch.tensor([200, 50, 7, 120], device=dev)
ly = torch.tensor([150, 3, 90, 100], device=dev)
for path in ("fused", "gather", "atomic"):
    os.environ["EAE_KERNELS_CUDA_PATH"] = path
    for k, p in ((1, 2.0), (3, 1.0), (3, float("inf"))):
        tag = f"{path} k={k} p={p}"
        check(f"kl_entropy_sets {tag}", OP.kl_entropy_sets, (x, lx, k, p, EPS, True), exact=(2,))
        check(f"kl_divergence {tag}", OP.kl_divergence, (x, y, lx, ly, k, p, EPS, True))
        check(f"kl_cross_entropy {tag}", OP.kl_cross_entropy, (x, y, lx, ly, k, p, EPS, True))
    check(f"kl_divergence {path} k=20 (list search)", OP.kl_divergence, (x, y, None, None, 20, 2.0, EPS, True))
    xn = torch.nn.functional.normalize(x, dim=-1)
    check(f"koleo {path}", OP.koleo, (xn, lx, EPS, True, 0, -1))
os.environ.pop("EAE_KERNELS_CUDA_PATH", None)
check("knn_sets self k=20", OP.knn_sets, (x, None, None, None, 20, 2.0), exact=(1,))
check("knn_sets self k=3 ragged", OP.knn_sets, (x, None, lx, None, 3, 2.0), exact=(1,))
check("knn_sets cross k=2 ragged", OP.knn_sets, (x, y, lx, ly, 2, 2.0), exact=(1,))

backend = "cpu" if DRY else "cuda"
print(f"\nfwd+bwd ms per call ({backend} backend; median of 3 loops):", flush=True)
shapes = [(8, 100, 16), (4, 300, 16)] if DRY else [(64, 100, 16), (256, 1024, 16), (1, 20000, 32)]
for b, n, d in shapes:
    x = sets(b, n, d, 3).requires_grad_()
    y = sets(b, n, d, 4).requires_grad_()
    reps = 3 if DRY else 20
    batched = per_call_ms(lambda: eae_kernels.kl_entropy(x, 1, backend=backend).sum().backward(), reps)
    loop = per_call_ms(lambda: sum(eae_kernels.kl_entropy(x[i], 1, backend=backend) for i in range(b)).backward(), max(1, reps // 4))
    div = per_call_ms(lambda: eae_kernels.kl_divergence(x, y, 1, backend=backend).sum().backward(), reps)
    print(f"  B={b} N={n} d={d}: kl_entropy batched {batched:.3f} ms, loop of single sets {loop:.3f} ms "
          f"({loop / batched:.1f}x); kl_divergence batched {div:.3f} ms", flush=True)


def dinov2_koleo(x, eps=1e-8):
    x = torch.nn.functional.normalize(x, eps=1e-8, p=2, dim=-1)
    dots = torch.mm(x, x.t())
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, idx = torch.max(dots, dim=1)
    dist = torch.nn.PairwiseDistance(2, eps=1e-8)(x, x[idx])
    return -torch.log(dist + eps).mean()


print("\nKoLeo fwd+bwd ms (ours vs the DINOv2 formula):", flush=True)
for n, d in ([(256, 64)] if DRY else [(1024, 768), (4096, 768)]):
    x = sets(1, n, d, 5)[0].requires_grad_()
    ours = per_call_ms(lambda: eae_kernels.koleo_loss(x, backend=backend).backward(), 3 if DRY else 20)
    ref = per_call_ms(lambda: dinov2_koleo(x).backward(), 3 if DRY else 20)
    same = abs(eae_kernels.koleo_loss(x, backend=backend).item() - dinov2_koleo(x).item())
    print(f"  B={n} d={d}: ours {ours:.3f} ms, DINOv2 {ref:.3f} ms ({ref / ours:.2f}x), |difference| {same:.2e}", flush=True)
print(f"\nset ops: {'all match' if not failures else f'{failures} MISMATCHES'}")
raise SystemExit(1 if failures else 0)
PYEOF
note "set ops (CUDA estimators): exit $? ($(elapsed) s): $(tail -1 "$OUT/sets_bench.log")"
cat "$OUT/sets_bench.log"

# ---- 3. GPU timing ----------------------------------------------------------------------------
timeout "$(left)" "$PY" - "$OUT" >"$OUT/bench.log" 2>&1 <<'PYEOF'
import json, os, statistics, subprocess, sys, time, traceback

import torch

import eae_kernels
from eae_kernels import reference

out = sys.argv[1]
DRY = os.environ.get("GPU_CHECK_DRY") == "1"  # rehearsal: CPU backend, small N, no GPU parts
dev = torch.device("cpu" if DRY else "cuda")
OURS = ("cpu",) if DRY else ("cuda", "triton")
FAST = OURS[0]  # the backend whose knobs are timed (cuda)
SIZES = (100, 300) if DRY else (100, 1024, 16384, 65536)
REPS = {100: 200, 300: 20, 1024: 100, 16384: 10, 65536: 3}
results, lines = [], []


def sync():
    if not DRY:
        torch.cuda.synchronize()


def say(text=""):
    print(text, flush=True)
    lines.append(text)


def per_call_ms(fn, reps, warmup=3):
    """Wall-clock ms per call over a loop of `reps` calls synchronised at the end (what a
    training loop sees, launch overhead included); the median of 3 such loops."""
    for _ in range(warmup):
        fn()
    sync()
    loops = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        loops.append((time.perf_counter() - t0) * 1e3 / reps)
    return statistics.median(loops)


class Env:
    """Sets environment variables (the CUDA backend's knobs) for one measurement."""

    def __init__(self, env):
        self.env, self.saved = env, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def measure(name, n, d, reps, env=None, deterministic=False):
    env = env or {}
    label = " ".join([name] + [f"{k.rsplit('_', 1)[-1].lower()}={v}" for k, v in env.items()]
                     + (["deterministic"] if deterministic else []))
    row = {"method": label, "backend": name, "N": n, "d": d}
    if name == "reference":
        f = lambda x: reference.kl_entropy(x, 1)
    else:
        f = lambda x: eae_kernels.kl_entropy(x, 1, backend=name, deterministic=deterministic)
    try:
        with Env(env):
            z = torch.randn(n, d, device=dev, generator=torch.Generator(device=dev).manual_seed(n))
            with torch.no_grad():
                row["fwd_ms"] = per_call_ms(lambda: f(z), reps)
            zg = z.clone().requires_grad_()
            row["fwd_bwd_ms"] = per_call_ms(lambda: f(zg).backward(), reps)
            row["H"] = float(f(z))
    except Exception as exc:  # report and go on: one failing backend must not hide the others
        row["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
        if not DRY:
            torch.cuda.empty_cache()
    results.append(row)
    if "error" in row:
        say(f"| {label} | {n} | {d} | error: {row['error']} | | |")
    else:
        say(f"| {label} | {n} | {d} | {row['fwd_ms']:.4f} | {row['fwd_bwd_ms']:.4f} | {row['H']:.6f} |")
    return row


def find(label, n, d=64):
    return next((r for r in results if r["method"] == label and r["N"] == n and r["d"] == d and "fwd_bwd_ms" in r), None)


name = "CPU (dry run)" if DRY else torch.cuda.get_device_properties(dev).name
say(f"Device: {name}; torch {torch.__version__}; eae_kernels at {os.path.dirname(eae_kernels.__file__)}")
say("Wall-clock ms per call (loop of calls, synchronised at the end; median of 3 loops). float32, k=1, p=2.")
say()
say("| method | N | d | fwd ms | fwd+bwd ms | H |")
say("|---|---:|---:|---:|---:|---:|")
for n in SIZES:
    for backend in OURS + ("reference",):
        measure(backend, n, 64, REPS[n])

say()
say("fwd+bwd speed-up over the reference:")
for n in SIZES:
    ref = find("reference", n)
    for backend in OURS:
        r = find(backend, n)
        if ref and r:
            say(f"  N={n:6d} {backend:7s} {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:8.1f}x")

say()
say(f"{FAST} variants (searcher / gradient-path knobs) and the cost of deterministic=True:")
say("| method | N | d | fwd ms | fwd+bwd ms | H |")
say("|---|---:|---:|---:|---:|---:|")
for n in SIZES[-2:]:
    for tile in ("small", "large"):
        measure(FAST, n, 64, REPS[n], env={"EAE_KERNELS_CUDA_TILE": tile})
    measure(FAST, n, 64, REPS[n], deterministic=True)
measure(FAST, SIZES[1], 64, REPS[SIZES[1]], env={"EAE_KERNELS_CUDA_PATH": "atomic"})

say()
n_target, d_target = (300, 128) if DRY else (65536, 128)
say(f"Design target: N={n_target}, d={d_target}: fp32 throughput of the distance loop, counted as 3 flops per")
say("pair and coordinate (sub, mul, add: one sub + one fma instruction), against the fp32 peak")
say("(SMs x 128 lanes x 2 flops x max SM clock).")
say("| method | N | d | fwd ms | fwd+bwd ms | H |")
say("|---|---:|---:|---:|---:|---:|")
peak = None
if not DRY:
    try:
        clock_ghz = float(subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                                         capture_output=True, text=True).stdout.split()[0]) / 1e3
        peak = torch.cuda.get_device_properties(dev).multi_processor_count * 128 * 2 * clock_ghz * 1e9
    except Exception:
        say("  (no SM clock from nvidia-smi: no peak fraction)")
for backend in OURS:
    r = measure(backend, n_target, d_target, 3)
    if "fwd_ms" in r:
        rate = 3.0 * n_target**2 * d_target / (r["fwd_ms"] * 1e-3)
        r["fp32_tflops"] = rate / 1e12
        frac = f" = {100 * rate / peak:.0f}% of the {peak / 1e12:.1f} TFLOP/s fp32 peak" if peak else ""
        say(f"  {backend}: forward {rate / 1e12:.2f} TFLOP/s{frac}")

say()
SEARCH_BACKEND = "cpu" if DRY else "triton"  # dry: the CPU reads the same EAE_KERNELS_SEARCH
say(f"Search paths of the {SEARCH_BACKEND} backend (EAE_KERNELS_SEARCH), N={n_target}, d={d_target}, k=1: the")
say("certified low-precision search + exact refinement against the exact search (target: mixed")
say("fwd+bwd <= 5 ms on an H100/H200). The mixed path always gathers the gradient (deterministic).")
say("| method | N | d | fwd ms | fwd+bwd ms | H |")
say("|---|---:|---:|---:|---:|---:|")
for mode, det in (("exact", False), ("exact", True), ("mixed", False)):
    measure(SEARCH_BACKEND, n_target, d_target, 3, env={"EAE_KERNELS_SEARCH": mode}, deterministic=det)
if not DRY:  # the same with bf16 dot operands (twice the tensor-core rate, a wider candidate band)
    from eae_kernels import triton_mixed
    triton_mixed.DOT_INPUT = "bf16"
    measure(SEARCH_BACKEND, n_target, d_target, 3, env={"EAE_KERNELS_SEARCH": "mixed"})["method"] += " dot=bf16"
    say("  (the row above: bf16 dot operands)")
    triton_mixed.DOT_INPUT = "tf32"
try:
    if not DRY:
        from eae_kernels import triton_mixed
        triton_mixed.COUNT_BLOCKS = True
    z = torch.randn(n_target, d_target, device=dev, generator=torch.Generator(device=dev).manual_seed(7))
    got = {}
    for mode in ("exact", "mixed"):
        with Env({"EAE_KERNELS_SEARCH": mode}):
            zz = z.clone().requires_grad_()
            h = eae_kernels.kl_entropy(zz, 1, backend=SEARCH_BACKEND, deterministic=True)
            h.backward()
            got[mode] = (h.detach(), zz.grad)
    same = all(torch.equal(a, b) for a, b in zip(got["exact"], got["mixed"]))
    blocks = "" if DRY else " (calls, row blocks refined, row blocks searched exactly: %s)" % (triton_mixed.stats(),)
    say(f"  mixed == exact bit for bit (H, gradient): {same}{blocks}")
    results.append({"method": "search paths bit-identical", "N": n_target, "d": d_target, "same": same})
except Exception:
    say("  failed: " + traceback.format_exc().strip().splitlines()[-1])

if not DRY:
    say()
    say("CUDA graph: forward+gradient of the op at N=100, d=64, eager call vs graph replay:")
    try:
        z = torch.randn(100, 64, device=dev)
        op = torch.ops.eae_kernels.kl_entropy
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            op(z, 1, 2.0, 1e-8, True, False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            op(z, 1, 2.0, 1e-8, True, False)
        eager = per_call_ms(lambda: op(z, 1, 2.0, 1e-8, True, False), 500)
        replay = per_call_ms(graph.replay, 500)
        say(f"  eager {eager * 1e3:.1f} us per call, graph replay {replay * 1e3:.1f} us per call")
        results.append({"method": "cuda graph", "N": 100, "d": 64, "eager_us": eager * 1e3, "replay_us": replay * 1e3})
    except Exception:
        say("  failed: " + traceback.format_exc().strip().splitlines()[-1])

n_scale = 20_000 if DRY else 1_000_000
say()
say(f"Scale: N={n_scale:,}, d=64, one forward+backward ({FAST}), peak memory:")
try:
    if not DRY:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    z = torch.randn(n_scale, 64, device=dev).requires_grad_()
    t0 = time.perf_counter()
    h = eae_kernels.kl_entropy(z, 1, backend=FAST)
    h.backward()
    sync()
    dt = time.perf_counter() - t0
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if not DRY else float("nan")
    say(f"  {dt:.2f} s, H = {h.item():.6f}, finite gradient: {bool(torch.isfinite(z.grad).all())}, "
        f"peak {peak_gib:.2f} GiB (z and its gradient: {2 * z.numel() * 4 / 2**30:.2f} GiB)")
    results.append({"method": FAST, "N": n_scale, "d": 64, "fwd_bwd_s": dt, "peak_gib": peak_gib})
except Exception:
    say("  failed: " + traceback.format_exc().strip().splitlines()[-1])

with open(os.path.join(out, "bench.json"), "w") as f:
    json.dump({"device": name, "torch": torch.__version__, "results": results}, f, indent=1)
with open(os.path.join(out, "bench.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
PYEOF
note "bench: exit $? ($(elapsed) s); results in bench.md / bench.json"
cat "$OUT/bench.log"

# ---- 3b. Triton specifics: kernel count of the small path, CUDA graph, small/tiled crossover ----
if [ "$DRY" != 1 ] && [ "$(left)" -gt 90 ]; then
  timeout 90 "$PY" scripts/gpu_triton_check.py >"$OUT/triton_check.log" 2>&1
  note "triton check: exit $? ($(elapsed) s); see triton_check.log"
fi

# ---- 3c. Triton ops on batches of sets: checked against the CPU op and timed (dry: interpreter) --
if [ "$(left)" -gt 60 ]; then
  timeout 150 "$PY" scripts/gpu_triton_sets_check.py >"$OUT/triton_sets.log" 2>&1
  note "triton set ops: exit $? ($(elapsed) s): $(grep '^set ops:' "$OUT/triton_sets.log" || echo 'no verdict (timed out?)')"
  cat "$OUT/triton_sets.log"
fi
if [ "$DRY" != 1 ] && [ "$(left)" -gt 150 ]; then
  timeout 150 "$PY" -m pytest -q -x tests/test_triton_estimators.py -p no:cacheprovider >"$OUT/test_triton_sets.log" 2>&1
  note "tests/test_triton_estimators.py: exit $? ($(elapsed) s): $(tail -1 "$OUT/test_triton_sets.log")"
fi

# ---- 4. The whole suite with the time that is left ---------------------------------------------
if [ "$DRY" = 1 ]; then
  note "pytest -x tests: not run (dry run)"
elif [ "$(left)" -gt 30 ]; then
  timeout "$(left)" "$PY" -m pytest -q -x tests -p no:cacheprovider >"$OUT/tests.log" 2>&1
  rc=$?
  [ $rc -eq 124 ] && note "pytest -x tests: TIMED OUT after $(elapsed) s (partial log in tests.log)" \
    || note "pytest -x tests: exit $rc ($(elapsed) s): $(tail -1 "$OUT/tests.log")"
else
  note "pytest -x tests: not run, no time left ($(elapsed) s)"
fi
note "== done in $(elapsed) s"
cat "$SUMMARY"
