"""The Triton backend's ops on batches of sets on a GPU: each against the CPU op on the same input
(neighbours, values, gradients) and timed against the obvious alternative. Step 3c of
scripts/gpu_check.sh; prints one table row per case and exits 1 when a check fails.

    python scripts/gpu_triton_sets_check.py          # on cuda:0
    GPU_CHECK_DRY=1 python scripts/gpu_triton_sets_check.py   # rehearsal: Triton's interpreter, tiny sizes

Cases (GPU sizes): the EAE shape B=64 sets of N=100, d=16, fwd+bwd, as one batched call and as a
Python loop of single-set calls; a ragged batch; kl_divergence and kl_cross_entropy at N=4096,
d=64 against the reference (dense cdist); koleo_loss at B=4096, d=768 against the DINOv2 formula;
knn_sets cross-set B=8 x 2048 x 32, k=5, against cdist + topk. Each timing is the median of 3
loops of calls synchronised at the end (launch overhead included).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import traceback

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
if DRY:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

import eae_kernels  # noqa: E402
from eae_kernels import reference, triton_backend  # noqa: E402

DEV = torch.device("cpu" if DRY else "cuda")
REPS = 1 if DRY else 20
failures: list[str] = []


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def per_call_ms(fn, reps=REPS, warmup=1 if DRY else 3):
    for _ in range(warmup):
        fn()
    sync()
    loops = []
    for _ in range(1 if DRY else 3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        loops.append((time.perf_counter() - t0) * 1e3 / reps)
    return statistics.median(loops)


def rel_error(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if not torch.equal(a.isnan(), b.isnan()):
        return float("inf")
    ok = ~b.isnan()
    scale = max(1e-30, b[ok].abs().max().item()) if ok.any() else 1.0
    return (a[ok] - b[ok]).abs().max().item() / scale if ok.any() else 0.0


def check(label, errors: dict, tolerance: float, same_neighbours: bool | None = None):
    worst = max(errors.values())
    ok = worst <= tolerance and same_neighbours is not False
    detail = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    if same_neighbours is not None:
        detail += ", neighbours " + ("equal" if same_neighbours else "DIFFER")
    print(f"  check {label}: {detail} -> {'pass' if ok else 'FAIL'}", flush=True)
    if not ok:
        failures.append(label)


def row(label, ours_ms, other_label, other_ms):
    print(f"| {label} | {ours_ms:.3f} | {other_label} | {other_ms:.3f} | {other_ms / ours_ms:.1f}x |", flush=True)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEV)


def case_batched_entropy():
    b, n, d = (4, 20, 4) if DRY else (64, 100, 16)
    z = randn(b, n, d, seed=1).requires_grad_(True)
    h_cpu, g_cpu, nbr_cpu = torch.ops.eae_kernels.kl_entropy_sets(z.detach().cpu(), None, 1, 2.0, 1e-8, True)
    h, g, nbr = triton_backend.set_op("kl_entropy_sets")(z.detach(), None, 1, 2.0, 1e-8, True)
    check(f"kl_entropy_sets B={b} N={n} d={d}", {"H": rel_error(h, h_cpu), "grad": rel_error(g, g_cpu)}, 1e-4,
          torch.equal(nbr.cpu(), nbr_cpu))  # fmt: skip

    def batched():
        torch.autograd.grad(eae_kernels.kl_entropy(z, 1, backend="triton").sum(), z)

    def loop():
        for i in range(b):
            zi = z[i].detach().requires_grad_(True)
            torch.autograd.grad(eae_kernels.kl_entropy(zi, 1, backend="triton"), zi)

    row(f"kl_entropy fwd+bwd, B={b} sets of N={n}, d={d}, batched", per_call_ms(batched), "loop of single sets",
        per_call_ms(loop))  # fmt: skip


def case_ragged():
    b, n, d = (3, 20, 3) if DRY else (64, 100, 16)
    x, y = randn(b, n, d, seed=2), randn(b, n, d, seed=3)
    g = torch.Generator().manual_seed(4)
    lx = torch.randint(5, n + 1, (b,), generator=g).to(DEV)
    ly = torch.randint(5, n + 1, (b,), generator=g).to(DEV)
    for op, k, p in [("kl_divergence", 3, float("inf")), ("kl_cross_entropy", 1, 1.0)]:
        got = triton_backend.set_op(op)(x, y, lx, ly, k, p, 1e-8, True)
        want = getattr(torch.ops.eae_kernels, op)(x.cpu(), y.cpu(), lx.cpu(), ly.cpu(), k, p, 1e-8, True)
        check(f"{op} ragged B={b} k={k} p={p}",
              {"value": rel_error(got[0], want[0]), "grad x": rel_error(got[1], want[1]),
               "grad y": rel_error(got[2], want[2])}, 1e-4)  # fmt: skip
    dist, idx = triton_backend.set_op("knn_sets")(x, y, lx, ly, 3, 2.0)
    dist_cpu, idx_cpu = torch.ops.eae_kernels.knn_sets(x.cpu(), y.cpu(), lx.cpu(), ly.cpu(), 3, 2.0)
    check(f"knn_sets ragged B={b} k=3", {"dist": rel_error(dist, dist_cpu)}, 1e-5, torch.equal(idx.cpu(), idx_cpu))


def case_pair_ops():
    n, d = (30, 4) if DRY else (4096, 64)
    x, y = randn(n, d, seed=5).requires_grad_(True), (randn(n, d, seed=6) + 0.5).requires_grad_(True)
    for op in ("kl_divergence", "kl_cross_entropy"):
        fn = getattr(eae_kernels, op)
        got = fn(x, y, 1, backend="triton")
        gx, gy = torch.autograd.grad(got, (x, y))
        want = fn(x.detach().cpu(), y.detach().cpu(), 1, backend="cpu")
        check(f"{op} N={n} d={d}", {"value": rel_error(got, want)}, 1e-5)
        ours = per_call_ms(lambda: torch.autograd.grad(fn(x, y, 1, backend="triton"), (x, y)))
        ref = getattr(reference, op)
        other = per_call_ms(lambda: torch.autograd.grad(ref(x, y, 1), (x, y)))
        row(f"{op} fwd+bwd, N=M={n}, d={d}", ours, "reference (dense cdist)", other)


def dinov2_koleo(x, eps=1e-8):
    """DINOv2's KoLeoLoss.forward (dinov2/loss/koleo_loss.py), inlined."""
    with torch.autocast("cuda", enabled=False):
        x = torch.nn.functional.normalize(x, eps=eps, p=2, dim=-1)
        dots = torch.mm(x, x.t())
        n = x.shape[0]
        dots.view(-1)[:: (n + 1)].fill_(-1)
        _, idx = torch.max(dots, dim=1)
        dist = torch.nn.PairwiseDistance(2, eps=eps)(x, x[idx])
        return -torch.log(dist + eps).mean()


def case_koleo():
    for n, d in [(24, 8)] if DRY else [(1024, 768), (4096, 768)]:
        x = randn(n, d, seed=7).requires_grad_(True)
        got = eae_kernels.koleo_loss(x, backend="triton")
        check(f"koleo_loss B={n} d={d} vs DINOv2", {"loss": rel_error(got, dinov2_koleo(x))}, 1e-5)
        ours = per_call_ms(lambda: torch.autograd.grad(eae_kernels.koleo_loss(x, backend="triton"), x))
        other = per_call_ms(lambda: torch.autograd.grad(dinov2_koleo(x), x))
        row(f"koleo_loss fwd+bwd, B={n}, d={d}", ours, "DINOv2 formula", other)


def case_knn_cross():
    b, n, d, k = (2, 20, 3, 3) if DRY else (8, 2048, 32, 5)
    x, y = randn(b, n, d, seed=8), randn(b, n, d, seed=9)
    dist, idx = eae_kernels.knn_distances(x, y, k, backend="triton")
    dist_cpu, idx_cpu = torch.ops.eae_kernels.knn_sets(x.cpu(), y.cpu(), None, None, k, 2.0)
    check(f"knn_sets cross B={b} N={n} d={d} k={k}", {"dist": rel_error(dist, dist_cpu)}, 1e-5,
          torch.equal(idx.cpu(), idx_cpu))  # fmt: skip
    ours = per_call_ms(lambda: eae_kernels.knn_distances(x, y, k, backend="triton"))
    other = per_call_ms(lambda: torch.cdist(x, y).topk(k, dim=-1, largest=False))
    row(f"knn_distances cross, B={b}, N=M={n}, d={d}, k={k}", ours, "cdist + topk", other)


def main() -> int:
    where = "Triton interpreter on CPU (dry run)" if DRY else torch.cuda.get_device_name(DEV)
    print(f"Triton set ops on {where}; float32; ms per call (median of 3 loops)")
    print("| case | triton ms | other | other ms | speed-up |")
    print("|---|---:|---|---:|---:|")
    for case in (case_batched_entropy, case_ragged, case_pair_ops, case_koleo, case_knn_cross):
        try:
            case()
        except Exception:
            failures.append(case.__name__)
            print(f"  {case.__name__} raised: {traceback.format_exc().strip().splitlines()[-1]}", flush=True)
    print("set ops: " + (f"FAILED: {', '.join(failures)}" if failures else "every check passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
