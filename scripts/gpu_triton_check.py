"""GPU check of the Triton backend (run from the repository root on the H100, after
`pip install --no-build-isolation -e .` and `pytest -x tests`):

    python gpu_triton_check.py            # ~3-5 min: autotuning on first calls dominates
    python gpu_triton_check.py --dry-run  # CPU + TRITON_INTERPRET=1, tiny sizes (checks the script)

Prints: correctness against the CPU op at N=16384, the one-launch check of the small-batch path
(profiler kernel count, CUDA-graph capture and replay), torch.compile(fullgraph=True), fwd and
fwd+bwd times of triton / triton deterministic / cuda / reference at N in {100, 1024, 16384,
65536}, d=64, the fp32 throughput at N=65536, d=128, and the small-vs-tiled crossover that
SMALL_BATCH_MAX_WORK should be set to.
"""

import os
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import eae_kernels  # noqa: E402
from eae_kernels import backends, triton_backend  # noqa: E402

DEV = "cpu" if DRY else "cuda"
EPS = eae_kernels.DEFAULT_EPS
H100_FP32_FMA_PER_S = 33.5e12  # 132 SMs x 128 lanes x 1.98 GHz (SXM boost)


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def timeit(fn, reps=20):
    """Median wall time of fn() in microseconds (synchronised), after warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(3 if DRY else reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e6 * times[len(times) // 2]


def forward(z, backend, **kw):
    return lambda: eae_kernels.kl_entropy(z, 1, backend=backend, **kw)


def forward_backward(z, backend, **kw):
    x = z.clone().requires_grad_(True)

    def run():
        h = eae_kernels.kl_entropy(x, 1, backend=backend, **kw)
        torch.autograd.grad(h, x)

    return run


def check_against_cpu(n, d):
    z = torch.randn(n, d, device=DEV)
    h_cpu, g_cpu, nbr_cpu = torch.ops.eae_kernels.kl_entropy(z.cpu(), 1, 2.0, EPS, True, True)
    for det in (False, True):
        h, g, nbr = triton_backend.kl_entropy_op()(z, 1, 2.0, EPS, True, det)
        print(
            f"  N={n} d={d} deterministic={det}: |dH|={abs(h.item() - h_cpu.item()):.2e} "
            f"max|dg|/max|g|={((g.cpu() - g_cpu).abs().max() / g_cpu.abs().max()).item():.2e} "
            f"nbr equal: {torch.equal(nbr.cpu(), nbr_cpu)}"
        )
    a = triton_backend.kl_entropy_op()(z, 1, 2.0, EPS, True, True)
    b = triton_backend.kl_entropy_op()(z, 1, 2.0, EPS, True, True)
    print(f"  deterministic twice bit-identical: {all(torch.equal(x, y) for x, y in zip(a, b))}")


def check_one_launch_and_graph():
    n, d = (100, 64) if not DRY else (20, 4)
    z = torch.randn(n, d, device=DEV)
    op = triton_backend.kl_entropy_op()
    if DEV == "cuda":  # a shape class never seen: its first call during capture must say what to do
        unseen = torch.randn(n + 1, d, device=DEV)
        try:
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                op(unseen, 1, 2.0, EPS, True, False)
            print("  first call during capture: did NOT raise")
        except RuntimeError as exc:
            print(f"  first call during capture raises: {'eae_kernels.warmup' in str(exc)} ({str(exc)[:90]}...)")
    eae_kernels.warmup(z, 1, backend="triton")  # compile + autotune outside the capture
    if DEV != "cuda":
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        op(z, 1, 2.0, EPS, True, False)
        sync()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"  small path N={n}: {len(kernels)} GPU kernel(s): {sorted(set(kernels))}")
    static_z = z.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, g, nbr = op(static_z, 1, 2.0, EPS, True, False)
    static_z.copy_(torch.randn_like(z))
    graph.replay()
    h2, g2, nbr2 = op(static_z, 1, 2.0, EPS, True, False)
    sync()
    print(f"  CUDA graph replay equals eager: {torch.equal(h, h2) and torch.equal(g, g2) and torch.equal(nbr, nbr2)}")
    print(f"  graph replay time: {timeit(graph.replay):.1f} us")


def check_compile():
    z = torch.randn(64, 8, device=DEV)

    def loss(x):
        return eae_kernels.kl_entropy(x, 1, backend="triton")

    x1, x2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager" if DRY else "inductor")
    compiled(x1).backward()
    loss(x2).backward()
    print(f"  torch.compile(fullgraph=True) gradient equals eager: {torch.equal(x1.grad, x2.grad)}")


def timings():
    sizes = [(100, 64), (1024, 64), (16384, 64), (65536, 64)] if not DRY else [(20, 4), (40, 4)]
    backends = [("triton", "triton", {}), ("triton-det", "triton", {"deterministic": True}),
                ("cuda", "cuda", {}), ("reference", "reference", {})]  # fmt: skip
    print(f"  {'N':>6} {'d':>4} {'backend':>11} {'fwd us':>10} {'fwd+bwd us':>11}")
    for n, d in sizes:
        z = torch.randn(n, d, device=DEV)
        for name, backend, kw in backends:
            reason = backends.why_unavailable(backend, "kl_entropy", z.device)
            if reason is not None:
                print(f"  {n:>6} {d:>4} {name:>11} unavailable: {reason}")
                continue
            try:
                f = timeit(forward(z, backend, **kw))
                fb = timeit(forward_backward(z, backend, **kw))
                print(f"  {n:>6} {d:>4} {name:>11} {f:>10.1f} {fb:>11.1f}")
            except torch.OutOfMemoryError:
                print(f"  {n:>6} {d:>4} {name:>11} out of memory")
                torch.cuda.empty_cache()


def throughput():
    n, d = (65536, 128) if not DRY else (40, 4)
    z = torch.randn(n, d, device=DEV)
    for kw in ({}, {"deterministic": True}):
        t = timeit(forward(z, "triton", **kw), reps=5) * 1e-6
        rate = n * (n - 1) * d / t
        print(f"  N={n} d={d} {kw or ''}: fwd {t * 1e3:.2f} ms, {rate / 1e12:.2f} T pair-coordinates/s "
              f"= {100 * rate / H100_FP32_FMA_PER_S:.0f}% of the fp32 FMA rate (one FMA + one sub each)")
    dist = timeit(lambda: triton_backend.knn_op()(z, 1, 2.0), reps=5) * 1e-6
    print(f"  knn k=1: {dist * 1e3:.2f} ms")


def crossover():
    """Small (one program) against tiled, fwd+bwd, to set SMALL_BATCH_MAX_WORK."""
    saved = triton_backend.SMALL_BATCH_MAX_WORK
    sizes = [(100, 64), (256, 64), (512, 64), (1024, 64), (256, 256), (1024, 256)] if not DRY else [(20, 4)]
    for n, d in sizes:
        z = torch.randn(n, d, device=DEV)
        result = {}
        for path, work in (("small", 1 << 40), ("tiled", 0)):
            triton_backend.SMALL_BATCH_MAX_WORK = work
            result[path] = timeit(forward_backward(z, "triton"))
        print(f"  N={n} d={d} work={n * n * d}: small {result['small']:.1f} us, tiled {result['tiled']:.1f} us")
    triton_backend.SMALL_BATCH_MAX_WORK = saved


if __name__ == "__main__":
    print(f"device: {torch.cuda.get_device_name() if DEV == 'cuda' else 'cpu (dry run)'}; torch {torch.__version__}")
    for title, step in [("correctness vs the CPU op", lambda: check_against_cpu(*((16384, 64) if not DRY else (40, 4)))),
                        ("one launch + CUDA graph (small path)", check_one_launch_and_graph),
                        ("torch.compile", check_compile), ("timings", timings), ("throughput", throughput),
                        ("small/tiled crossover", crossover)]:  # fmt: skip
        print(title)
        step()
