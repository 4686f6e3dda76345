"""Self-check of the GPU backends against the CPU kernel: run this first on a new GPU.

    python -m eae_kernels.selfcheck                   # every backend available on cuda:0
    python -m eae_kernels.selfcheck --device cuda:1
    python -m eae_kernels.selfcheck --device cpu      # the Triton kernels in Triton's interpreter

For every backend available on the device (``cuda``, ``triton``) it runs a fixed set of cases
that go through every execution path: the small one-launch kernel, the tiled search with the
atomic gradient, the tiled search with the deterministic gather, knn, and, for the backends that
implement them, a ragged batch of sets (kl_entropy_sets: "sets") and of set pairs
(kl_divergence, gradients of x and y: "cross"); k in {1, 5}, p in {1, 2, inf}, float32 and
bfloat16, a transposed (non-contiguous) input and integer rows full of exact ties and
duplicates. Each case is compared with the CPU kernel on the same input (bfloat16 rows
are compared after rounding, both sides computing in float32):

  * neighbours: identical (exact ties go to the lower index on every backend; the random inputs
    have no near-ties closer than a rounding);
  * H (or the set values), the gradients and knn distances: within rounding, not bit for bit (see ``TOLERANCES``: another
    order of float additions, fused multiply-adds, another log);
  * deterministic cases (the small path, deterministic=True): a second call gives the same bits.

It prints a table (backend, path, case, max error, repeat, result, time) and exits with 1 when a
case fails, 2 when nothing could be checked.

``backend="auto"`` on a CUDA device runs a small version of the same check (``QUICK`` cases: the
three kl_entropy paths and, where the backend implements it, one ragged kl_divergence batch)
once per process, device and backend, before the first use of the cuda or triton backend
(``backend_healthy``). On a mismatch it warns once, naming the failing path, and ``auto`` uses
the next backend (cuda, then triton, then the reference). ``EAE_KERNELS_AUTO_SELFCHECK=0`` turns
this off. It will be switched off by default once the GPU kernels have been verified on hardware.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

__all__ = ["Case", "Result", "cases", "cases_for", "check", "backend_healthy", "warmup", "format_table", "main", "AUTO_SELFCHECK_ENV"]

AUTO_SELFCHECK_ENV = "EAE_KERNELS_AUTO_SELFCHECK"
EPS = 1e-8

# Largest allowed error, relative: |h - h_cpu| / max(1, |h_cpu|), max |g - g_cpu| / max |g_cpu|,
# max |dist - dist_cpu| / max(1, |dist_cpu|). Keyed by the input dtype. float32 leaves room for
# atomics and another summation order; bfloat16 gradients are rounded to 8 significant bits.
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-5, 1e-2), torch.float64: (1e-12, 1e-10)}

# Which device types backend="auto" checks (tests add "cpu" to check Triton's interpreter).
AUTO_CHECK_DEVICE_TYPES = ("cuda",)


@dataclass(frozen=True)
class Case:
    path: str  # "small", "tiled-atomic", "tiled-gather", "knn", or a set op's: "sets", "cross"
    k: int
    p: float
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"  # or "transposed"
    data: str = "random"  # or "ties": small integers, many exact ties and duplicates

    @property
    def deterministic(self) -> bool:
        return self.path == "tiled-gather"

    @property
    def op(self) -> str:
        """The backend-table op this case runs (backends.py)."""
        return SET_PATHS.get(self.path, "knn" if self.path == "knn" else "kl_entropy")

    @property
    def label(self) -> str:
        p = "inf" if self.p == math.inf else str(int(self.p))
        dtype = str(self.dtype).replace("torch.", "")
        extra = "".join(f", {x}" for x in (self.layout, self.data) if x not in ("contiguous", "random"))
        return f"k={self.k} p={p} {dtype}{extra}"


@dataclass
class Result:
    backend: str
    case: Case
    n: int
    d: int
    max_error: float
    repeat_ok: bool | None  # None: not a deterministic case
    passed: bool
    seconds: float
    detail: str = ""


INF = math.inf
FULL = [
    Case("small", 1, 2.0),
    Case("small", 5, 1.0),
    Case("small", 1, INF, torch.bfloat16),
    Case("small", 5, 2.0, layout="transposed"),
    Case("small", 1, 2.0, data="ties"),
    Case("tiled-atomic", 1, 2.0),
    Case("tiled-atomic", 5, INF),
    Case("tiled-atomic", 1, 1.0, layout="transposed"),
    Case("tiled-gather", 1, 2.0),
    Case("tiled-gather", 5, 1.0, data="ties"),
    Case("tiled-gather", 1, INF, torch.bfloat16),
    Case("tiled-gather", 5, 2.0, layout="transposed"),
    Case("knn", 5, 2.0),
    Case("knn", 1, INF, layout="transposed"),
    Case("knn", 5, 1.0, data="ties"),
    Case("sets", 5, 2.0),
    Case("sets", 1, 1.0, data="ties"),
    Case("cross", 1, 2.0),
    Case("cross", 5, INF, torch.bfloat16),
]
QUICK = [Case("small", 1, 2.0), Case("tiled-atomic", 5, 1.0), Case("tiled-gather", 1, INF), Case("cross", 3, 2.0)]
# The cases on batches of sets (ragged lengths, the last set full): path -> op. "sets": the
# entropy of each set; "cross": the divergence (self and cross search, gradients of x and y).
SET_PATHS = {"sets": "kl_entropy_sets", "cross": "kl_divergence"}


def _sizes(device: torch.device, quick: bool) -> dict[str, tuple[int, int]]:
    """(N, d) per path. On a GPU the sizes take the paths by themselves (the small path needs
    N <= 1024, d <= 256; the quick check stays just above that, since the CPU kernel computes
    the expected results); in the interpreter they are tiny and the path is forced."""
    if device.type == "cuda":
        if quick:
            return {"small": (256, 8), "tiled": (1100, 8), "knn": (1100, 8), "sets": (100, 8)}
        return {"small": (300, 16), "tiled": (2500, 16), "knn": (2500, 16), "sets": (100, 16)}
    return {"small": (24, 3), "tiled": (40, 3), "knn": (30, 3), "sets": (14, 3)}


SETS_B = 4  # sets per batch in the set cases


def cases(quick: bool = False) -> list[Case]:
    return list(QUICK if quick else FULL)


def cases_for(backend: str, quick: bool = False) -> list[Case]:
    """The cases of ``backend``: those whose op it implements (backends.BACKENDS)."""
    from . import backends

    return [case for case in cases(quick) if case.op in backends.BACKENDS[backend].ops]


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


def _backends_for(device: torch.device) -> dict[str, str | None]:
    """backend -> None when it can run on ``device``, else the reason it cannot."""
    from . import _extension, triton_backend

    probe = torch.zeros(2, 1, device=device)
    out: dict[str, str | None] = {}
    if device.type == "cuda":
        out["cuda"] = None if _extension.with_cuda() else "eae_kernels._C was built without its CUDA kernels"
    out["triton"] = triton_backend.unavailable_reason(probe)
    if not _extension.available():  # every backend is compared with the CPU kernel
        out = {name: _extension.unavailable_reason() for name in out}
    return out


def _entropy_op(backend: str):
    if backend == "triton":
        from . import triton_backend

        return triton_backend.kl_entropy_op()
    return torch.ops.eae_kernels.kl_entropy  # the compiled op: CPU or CUDA kernel by device


def _knn_op(backend: str):
    if backend == "triton":
        from . import triton_backend

        return triton_backend.knn_op()
    return torch.ops.eae_kernels.knn


def _input(case: Case, n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (d, n) if case.layout == "transposed" else (n, d)
    if case.data == "ties":
        z = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
    else:
        z = torch.randn(shape, generator=g, dtype=torch.float64)
    z = z.to(case.dtype)
    return z.t() if case.layout == "transposed" else z


@contextmanager
def _forced_triton_path(backend: str, device: torch.device, path: str):
    """In the interpreter the inputs are too small to leave the small path: force it."""
    if backend != "triton" or device.type == "cuda" or path not in ("small", "tiled-atomic", "tiled-gather"):
        yield
        return
    from . import triton_backend

    saved = triton_backend.SMALL_BATCH_MAX_WORK
    triton_backend.SMALL_BATCH_MAX_WORK = (1 << 62) if path == "small" else 0
    try:
        yield
    finally:
        triton_backend.SMALL_BATCH_MAX_WORK = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _relative(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    """max |a - b| / max(floor, max |b|), NaN-aware (NaN where the other has none: inf)."""
    a, b = a.detach().cpu().to(torch.float64), b.detach().cpu().to(torch.float64)
    if not torch.equal(a.isnan(), b.isnan()):
        return math.inf
    ok = ~b.isnan()
    if not bool(ok.any()):
        return 0.0
    a, b = a[ok], b[ok]
    if not torch.equal(a.isinf(), b.isinf()) or not torch.equal(a[a.isinf()], b[b.isinf()]):
        return math.inf
    fin = ~b.isinf()
    if not bool(fin.any()):
        return 0.0
    diff = (a[fin] - b[fin]).abs().max().item()
    scale = max(floor, b[fin].abs().max().item())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _set_inputs(case: Case, n: int, d: int, seed: int):
    """(x, y or None, lengths_x, lengths_y or None) of a set case: SETS_B ragged sets."""
    x = torch.stack([_input(case, n, d, seed + b) for b in range(SETS_B)])
    g = torch.Generator().manual_seed(seed)
    lx = torch.randint(case.k + 1, n + 1, (SETS_B,), generator=g)
    lx[-1] = n
    if case.path != "cross":
        return x, None, lx, None
    y = torch.stack([_input(case, n - 3, d, seed + 100 + b) for b in range(SETS_B)])
    ly = torch.randint(case.k, n - 2, (SETS_B,), generator=g)
    return x, y, lx, ly


def _run_set_case(backend: str, case: Case, device: torch.device, seed: int, quick: bool) -> Result:
    from . import backends

    n, d = _sizes(device, quick)["sets"]
    inputs = _set_inputs(case, n, d, seed)
    if case.path == "sets":
        args = lambda x, y, lx, ly: (x, lx, case.k, case.p, EPS, True)  # noqa: E731
    else:
        args = lambda x, y, lx, ly: (x, y, lx, ly, case.k, case.p, EPS, True)  # noqa: E731
    op = backends.op_for(backend, case.op)
    on_device = [None if t is None else t.to(device) for t in inputs]
    run = lambda: op(*args(*on_device))  # noqa: E731
    expected = getattr(torch.ops.eae_kernels, case.op)(*args(*inputs))
    _sync(device)
    start = time.perf_counter()
    got = run()
    _sync(device)
    seconds = time.perf_counter() - start
    repeat_ok = all(torch.equal(a, b) for a, b in zip(got, run()))  # no atomics: always deterministic

    tol_value, tol_grad = TOLERANCES[case.dtype]
    problems = []
    value_error = _relative(got[0], expected[0], 1.0)
    grad_errors = [_relative(got[1], expected[1], 0.0)]
    if case.path == "sets":
        if not torch.equal(got[2].cpu(), expected[2]):
            problems.append("neighbours differ")
    else:
        grad_errors.append(_relative(got[2], expected[2], 0.0))
    if value_error > tol_value:
        problems.append(f"value off by {value_error:.2e}")
    if max(grad_errors) > tol_grad:
        problems.append(f"gradient off by {max(grad_errors):.2e}")
    if not repeat_ok:
        problems.append("deterministic repeat differs")
    error = max(value_error, *grad_errors)
    return Result(backend, case, n, d, error, repeat_ok, not problems, seconds, "; ".join(problems))


def _run_case(backend: str, case: Case, device: torch.device, seed: int, quick: bool) -> Result:
    if case.path in SET_PATHS:
        return _run_set_case(backend, case, device, seed, quick)
    sizes = _sizes(device, quick)
    n, d = sizes["knn" if case.path == "knn" else ("small" if case.path == "small" else "tiled")]
    z_cpu = _input(case, n, d, seed)
    z = z_cpu.to(device)
    tol_value, tol_grad = TOLERANCES[case.dtype]
    with _forced_triton_path(backend, device, case.path):
        if case.path == "knn":
            run = lambda: _knn_op(backend)(z, case.k, case.p)  # noqa: E731
            expected = torch.ops.eae_kernels.knn(z_cpu, case.k, case.p)
        else:
            op = _entropy_op(backend)
            run = lambda: op(z, case.k, case.p, EPS, True, case.deterministic)  # noqa: E731
            expected = torch.ops.eae_kernels.kl_entropy(z_cpu, case.k, case.p, EPS, True, True)
        _sync(device)
        start = time.perf_counter()
        got = run()
        _sync(device)
        seconds = time.perf_counter() - start
        repeat_ok = None
        if case.path in ("small", "tiled-gather"):
            again = run()
            repeat_ok = all(torch.equal(a, b) for a, b in zip(got, again))

    problems = []
    if case.path == "knn":
        dist, idx = got
        if not torch.equal(idx.cpu(), expected[1]):
            problems.append("neighbours differ")
        error = _relative(dist, expected[0], 1.0)
        if error > tol_value:
            problems.append(f"distances off by {error:.2e}")
    else:
        h, grad, nbr = got
        if not torch.equal(nbr.cpu(), expected[2]):
            problems.append("neighbours differ")
        h_error = _relative(h, expected[0], 1.0)
        g_error = _relative(grad, expected[1], 0.0)
        error = max(h_error, g_error)
        if h_error > tol_value:
            problems.append(f"H off by {h_error:.2e}")
        if g_error > tol_grad:
            problems.append(f"gradient off by {g_error:.2e}")
    if repeat_ok is False:
        problems.append("deterministic repeat differs")
    return Result(backend, case, n, d, error, repeat_ok, not problems, seconds, "; ".join(problems))


def check(backends=None, device="cuda", *, quick: bool = False, seed: int = 0) -> list[Result]:
    """Runs the cases for ``backends`` (default: every one available on ``device``) and returns
    one Result per (backend, case). A case that raises is a failure with the exception as detail."""
    device = torch.device(device)
    if backends is None:
        backends = [name for name, reason in _backends_for(device).items() if reason is None]
    results = []
    for backend in backends:
        for i, case in enumerate(cases(quick)):
            if case not in cases_for(backend, quick):  # an op this backend does not implement
                continue
            try:
                results.append(_run_case(backend, case, device, seed + i, quick))
            except Exception as exc:  # a broken kernel or build: report it as this case's failure
                results.append(Result(backend, case, 0, 0, math.inf, None, False, 0.0,
                                      f"raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))  # fmt: skip
    return results


def format_table(results: list[Result]) -> str:
    head = f"{'backend':<8} {'path':<13} {'N x d':<10} {'case':<30} {'max error':>10} {'repeat':>7} {'result':>6} {'time':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        repeat = "-" if r.repeat_ok is None else ("same" if r.repeat_ok else "DIFF")
        err = "inf" if r.max_error == math.inf else f"{r.max_error:.1e}"
        line = (f"{r.backend:<8} {r.case.path:<13} {f'{r.n}x{r.d}':<10} {r.case.label:<30} {err:>10} {repeat:>7} "
                f"{'pass' if r.passed else 'FAIL':>6} {r.seconds * 1e3:>8.2f} ms")  # fmt: skip
        lines.append(line + ("" if r.passed else f"   <- {r.detail}"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# backend="auto": a quick check once per process, device and backend
# ---------------------------------------------------------------------------------------------

_HEALTH: dict[tuple[str, str], bool] = {}


def backend_healthy(backend: str, device) -> bool:
    """Whether ``backend`` passed the quick self-check on ``device`` (run on the first call for
    this backend and device, then remembered). Always True for the CPU and reference backends,
    on devices outside AUTO_CHECK_DEVICE_TYPES, and with EAE_KERNELS_AUTO_SELFCHECK=0. On a
    failure it warns once, naming the failing path."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if (
        backend in ("cpu", "reference")
        or device.type not in AUTO_CHECK_DEVICE_TYPES
        or os.environ.get(AUTO_SELFCHECK_ENV, "1") == "0"
    ):
        return True
    key = (backend, str(device))
    if key in _HEALTH:
        return _HEALTH[key]
    if torch.compiler.is_compiling():  # tracing: nothing can run now; the eager call checks
        return True
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"eae_kernels: backend='auto' checks the {backend} backend on {device} on its first use, which "
            "cannot happen during CUDA-graph capture. Call eae_kernels.warmup(z) (or kl_entropy once) before "
            f"capturing, pass backend={backend!r} explicitly, or set {AUTO_SELFCHECK_ENV}=0."
        )
    with torch.no_grad():
        results = check([backend], device, quick=True)
    failed = [r for r in results if not r.passed]
    _HEALTH[key] = not failed
    if failed:
        first = failed[0]
        warnings.warn(
            f"eae_kernels: the {backend} backend failed its self-check on {device} "
            f"(path {first.case.path}, {first.case.label}: {first.detail}; {len(failed)} of {len(results)} "
            f"cases failed). backend='auto' does not use it in this process. Full table: "
            f"`python -m eae_kernels.selfcheck --device {device}`; {AUTO_SELFCHECK_ENV}=0 skips this check.",
            RuntimeWarning,
            stacklevel=4,
        )
    return not failed


# ---------------------------------------------------------------------------------------------
# Warm-up before CUDA-graph capture
# ---------------------------------------------------------------------------------------------


def warmup(z: torch.Tensor, k: int = 1, *, p: float = 2.0, deterministic: bool = False,
           backend: str = "auto", knn: bool = False) -> None:
    """Runs kl_entropy (forward and gradient) once on random rows shaped like ``z`` (same
    shape, dtype and device; ``z``'s values are not used), and knn_distances when ``knn``:
    compiles and autotunes the Triton kernels for that shape class, and with ``backend="auto"``
    runs the backend self-check, so that later calls with these arguments never synchronise
    with the host and can be captured in a CUDA graph. Call it outside capture, with the
    arguments the captured calls will use. Exported as ``eae_kernels.warmup``."""
    from . import ops

    x = torch.randn(z.shape, dtype=z.dtype, device=z.device, requires_grad=True)
    with torch.enable_grad():
        h = ops.kl_entropy(x, k, p=p, backend=backend, deterministic=deterministic)
        torch.autograd.grad(h, x)
    if knn:
        ops.knn_distances(x.detach(), k, p=p, backend=backend)
    if z.device.type == "cuda":
        torch.cuda.synchronize(z.device)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eae_kernels.selfcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu",
                        help="cuda:N, or cpu for the Triton kernels in Triton's interpreter (default: %(default)s)")  # fmt: skip
    parser.add_argument("--backends", default=None, help="comma-separated subset of cuda,triton (default: all available)")
    parser.add_argument("--quick", action="store_true", help="only the cases backend='auto' runs")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{device}: no CUDA device visible to torch {torch.__version__}")
        return 2

    available = _backends_for(device)
    wanted = args.backends.split(",") if args.backends else list(available)
    print(f"eae_kernels self-check on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ' (Triton interpreter)'}, "
          f"torch {torch.__version__}, against the CPU kernel")  # fmt: skip
    runnable = []
    for name in wanted:
        reason = available.get(name, f"not a GPU backend of {device.type} devices")
        if reason is None:
            runnable.append(name)
        else:
            print(f"{name}: not checked ({reason})")
    if not runnable:
        print("nothing to check")
        return 2
    results = check(runnable, device, quick=args.quick)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} of {len(results)} cases passed" + (": FAILED" if failed else ""))
    print("(time: one call; a backend's first calls include compilation and autotuning)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
