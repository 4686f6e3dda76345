#!/usr/bin/env bash
# The GPU check of the CUDA and Triton backends: ONE script for a session that has a GPU machine
# (an H100 with torch + CUDA toolkit, no network). Under 8 minutes:
#
#   1. build eae_kernels._C in place with its CUDA kernels (sm_90 only, to save time)    ~1.5 min
#   1b. python -m eae_kernels.selfcheck: every GPU backend against the CPU kernel, every path  <= 4 min
#   2. pytest tests/test_cuda.py (the CUDA-specific checks)                               ~1 min
#   3. GPU timing: cuda, triton and reference, forward and forward+backward, float32, k=1,
#      d=64, N in {100, 1024, 16384, 65536}; the design targets (N=65536 with d=128 as a fraction
#      of fp32 peak); the CUDA tile/path variants; a CUDA-graph replay at N=100; and the scale
#      run N=1,000,000, d=64 with its peak memory                                         ~2 min
#      and the Triton search paths (EAE_KERNELS_SEARCH=exact|mixed) at N=65536, d=128, bit-identity
#   3b. scripts/gpu_triton_check.py: Triton kernel count, CUDA graph, small/tiled crossover (<= 90 s)
#   4. pytest -x tests (the whole suite, CUDA cases included) with the time that is left
#
# Usage (from the repository root):  OUT=/some/dir bash scripts/gpu_check.sh
# Everything it prints is also written under $OUT: build.log, test_cuda.log, bench.log,
# bench.json, bench.md, triton_check.log, tests.log and summary.txt (what passed, what failed).
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
