"""The Triton backend's ops on batches of sets (kl_entropy_sets, kl_cross_entropy, kl_divergence,
koleo, knn_sets) against the CPU ops: neighbours exactly, values and gradients (of x and of y) to
rounding, batched == a loop over the sets, ragged == slicing, k in {1, 3}, p in {1, 2, inf},
duplicates and ties, NaN, empty query sets, the public functions and backend="auto".

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 is set
before triton is imported). The interpreter is slow, so the sets are small; its block sizes are 16
(triton_backend.INTERPRETER_SEARCH_CONFIG), so sets of 13-20 rows still span several row blocks
of one set and ragged edges. Every estimator runs on both execution paths (fixture `path`): one
program per set (small), and the tiled search, value and gather kernels. The last test compiles
the set kernels for sm_80 and sm_90 without a GPU (lowering errors the interpreter cannot see).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import eae_kernels  # noqa: E402
from eae_kernels import backends, triton_backend  # noqa: E402

from conftest import integer_rows, random_rows  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
              pytest.mark.slow, pytest.mark.interpreter]  # fmt: skip

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = eae_kernels.DEFAULT_EPS
INF = math.inf

if triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE)) is not None:
    pytest.skip(
        f"triton backend unavailable: {triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE))}",
        allow_module_level=True,
    )

PATHS = {"small": 1 << 40, "tiled": 0}  # the per-set work bound of the one-program path


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    monkeypatch.setattr(triton_backend, "SMALL_BATCH_MAX_WORK", PATHS[request.param])
    return request.param


def sets(b: int, m: int, d: int, *, seed: int, dtype=torch.float64) -> torch.Tensor:
    return random_rows(b * m, d, seed=seed, dtype=dtype).view(b, m, d)


def lengths(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def on(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def run_both(name: str, *args):
    """(Triton outputs on CPU, CPU op outputs) of torch.ops.eae_kernels.<name> on the same inputs."""
    tensors = 2 if name in ("kl_entropy_sets", "koleo") else 4  # the leading (optional) tensor arguments
    got = triton_backend.set_op(name)(*on(DEVICE, *args[:tensors]), *args[tensors:])
    expected = getattr(torch.ops.eae_kernels, name)(*args)
    return [t.cpu() for t in got], list(expected)


def assert_close(actual, expected, rtol, atol=0.0):
    torch.testing.assert_close(actual.cpu().to(torch.float64), expected.to(torch.float64), rtol=rtol, atol=atol,
                               equal_nan=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Each estimator against the CPU op: ragged batches, both paths, k and p
# ---------------------------------------------------------------------------------------------

# op -> (k, p): together they cover k in {1, 3} and p in {1, 2, inf}, self, cross and both.
ESTIMATORS = {
    "kl_entropy_sets": [(3, 1.0), (1, INF)],
    "kl_cross_entropy": [(1, INF), (3, 2.0)],
    "kl_divergence": [(3, 2.0), (1, 1.0)],
}


@pytest.mark.parametrize("op", list(ESTIMATORS))
def test_estimators_match_the_cpu_op_float64(path, op):
    x = sets(3, 20, 3, seed=1)
    y = sets(3, 17, 3, seed=2)
    for (k, p), (lx, ly) in zip(ESTIMATORS[op], [(lengths(20, 7, 13), lengths(17, 4, 9)), (None, None)]):
        if op == "kl_entropy_sets":
            got, expected = run_both(op, x, lx, k, p, EPS, True)
        else:
            got, expected = run_both(op, x, y, lx, ly, k, p, EPS, True)
        assert got[0].dtype == torch.float64 and got[1].shape == x.shape
        assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
        assert_close(got[1], expected[1], rtol=1e-9, atol=1e-12)
        if op == "kl_entropy_sets":
            assert torch.equal(got[2], expected[2])  # neighbours, -1 on padded rows
        else:
            assert got[2].shape == y.shape
            assert_close(got[2], expected[2], rtol=1e-9, atol=1e-12)


def test_koleo_matches_the_cpu_op(path):
    x = torch.nn.functional.normalize(sets(3, 18, 4, seed=3), dim=-1)
    got, expected = run_both("koleo", x, lengths(18, 2, 11), EPS, True)
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    assert_close(got[1], expected[1], rtol=1e-9, atol=1e-12)
    # A row range of one set (the distributed global batch): that range's share.
    got = [t.cpu() for t in triton_backend.set_op("koleo")(x[:1].to(DEVICE), None, EPS, True, 5, 12)]
    expected = torch.ops.eae_kernels.koleo(x[:1], None, EPS, True, 5, 12)
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    assert_close(got[1], expected[1], rtol=1e-9, atol=1e-12)


def test_both_paths_and_block_sizes_give_the_same_bits(monkeypatch):
    """Every sum is in an order fixed by the set, never by the block sizes the autotuner picks:
    the tiled kernels under three block shapes and the one-program path agree bit for bit."""
    x, y = sets(2, 19, 3, seed=4), sets(2, 14, 3, seed=5)
    lx, ly = lengths(19, 9), lengths(14, 6)
    results = []
    monkeypatch.setattr(triton_backend, "SMALL_BATCH_MAX_WORK", 0)
    for block_m, block_n in [(16, 16), (8, 32), (32, 8)]:
        monkeypatch.setitem(triton_backend.INTERPRETER_SEARCH_CONFIG, "BLOCK_M", block_m)
        monkeypatch.setitem(triton_backend.INTERPRETER_SEARCH_CONFIG, "BLOCK_N", block_n)
        results.append(triton_backend.set_op("kl_divergence")(*on(DEVICE, x, y, lx, ly), 2, 2.0, EPS, True))
    monkeypatch.setattr(triton_backend, "SMALL_BATCH_MAX_WORK", 1 << 40)
    results.append(triton_backend.set_op("kl_divergence")(*on(DEVICE, x, y, lx, ly), 2, 2.0, EPS, True))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Batched == loop, ragged == slicing
# ---------------------------------------------------------------------------------------------


def test_ragged_batch_equals_each_set_alone():
    """Each set of a ragged batch gives what the set alone gives (sliced to its length); the
    padded rows get a zero gradient, for x and for y."""
    x, y = sets(3, 16, 3, seed=6), sets(3, 12, 3, seed=7)
    lx, ly = lengths(16, 5, 11), lengths(12, 3, 8)
    op = triton_backend.set_op("kl_divergence")
    value, gx, gy = (t.cpu() for t in op(*on(DEVICE, x, y, lx, ly), 2, INF, EPS, True))
    for b in range(3):
        m, n = int(lx[b]), int(ly[b])
        alone = [t.cpu() for t in op(*on(DEVICE, x[b : b + 1, :m], y[b : b + 1, :n]), None, None, 2, INF, EPS, True)]
        assert torch.equal(value[b : b + 1], alone[0])
        assert torch.equal(gx[b, :m], alone[1][0]) and torch.equal(gy[b, :n], alone[2][0])
        assert not gx[b, m:].any() and not gy[b, n:].any()


def test_full_batch_equals_a_loop_of_single_sets():
    z = sets(3, 14, 2, seed=8, dtype=torch.float32)
    h, g, nbr = (t.cpu() for t in triton_backend.set_op("kl_entropy_sets")(z.to(DEVICE), None, 1, 2.0, EPS, True))
    for b in range(3):
        h1, g1, nbr1 = triton_backend.kl_entropy_op()(z[b].to(DEVICE), 1, 2.0, EPS, True, True)
        assert_close(h[b], h1.cpu(), rtol=1e-6)
        assert_close(g[b], g1.cpu(), rtol=1e-5, atol=1e-6 * g1.abs().max().item())
        assert torch.equal(nbr[b], nbr1.cpu())


def test_edge_shapes_and_layouts():
    """d = 1, d = 70 (a 128-wide gather tile), a set of exactly k + 1 rows, and non-contiguous
    inputs (copied to one layout: the same bits as their contiguous copies)."""
    for d, m in [(1, 4), (70, 13)]:
        x, y = sets(2, 13, d, seed=30 + d), sets(2, 9, d, seed=40 + d)
        got, expected = run_both("kl_divergence", x, y, lengths(13, m), lengths(9, 3), 3, 2.0, EPS, True)
        for a, b in zip(got, expected):
            assert_close(a, b, rtol=1e-9, atol=1e-12)
    base = sets(2, 3, 15, seed=50, dtype=torch.float32).to(DEVICE)
    x = base.transpose(1, 2)  # (2, 15, 3), not contiguous
    assert not x.is_contiguous()
    op = triton_backend.set_op("kl_entropy_sets")
    for a, b in zip(op(x, None, 2, 1.0, EPS, True), op(x.contiguous(), None, 2, 1.0, EPS, True)):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# knn_sets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_knn_sets_match_the_cpu_op(cross):
    """Ragged sets with an empty query set (distance 0, index -1 on padded rows), exact ties and
    a duplicate; every p; k = 3."""
    x = integer_rows(3 * 15, 3, seed=9).view(3, 15, 3) + 0.25 * sets(3, 15, 3, seed=10)
    x[0, 4] = x[0, 9]
    y = integer_rows(3 * 11, 3, seed=11).view(3, 11, 3) if cross else None
    lx, ly = lengths(15, 0, 9), (lengths(11, 5, 3) if cross else None)
    for p in (1.0, 2.0, INF):
        dist, idx = triton_backend.set_op("knn_sets")(*on(DEVICE, x, y, lx, ly), 3, p)
        dist_cpu, idx_cpu = torch.ops.eae_kernels.knn_sets(x, y, lx, ly, 3, p)
        assert torch.equal(idx.cpu(), idx_cpu)
        assert_close(dist, dist_cpu, rtol=1e-12, atol=1e-12)
    assert (idx[1] == -1).all() and (dist[1] == 0).all() and (idx[2, 9:] == -1).all()


def test_knn_distances_public_api_and_gradient():
    x, y = sets(2, 13, 3, seed=12), sets(2, 9, 3, seed=13)
    lx = lengths(13, 6)
    results = []
    for backend, device in [("triton", DEVICE), ("cpu", "cpu")]:
        xx, yy = (t.clone().to(device).requires_grad_(True) for t in (x, y))
        dist, idx = eae_kernels.knn_distances(xx, yy, 2, p=2.0, lengths_x=lx.to(device), backend=backend)
        (dist * torch.arange(dist.numel(), device=device).view(dist.shape)).sum().backward()
        results.append((dist.detach().cpu(), idx.cpu(), xx.grad.cpu(), yy.grad.cpu()))
    assert torch.equal(results[0][1], results[1][1])
    for a, b in zip(results[0], results[1]):
        assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Ties, duplicates, NaN, half inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_ties_and_duplicates_follow_the_lower_index(k):
    x = integer_rows(2 * 16, 2, seed=14).view(2, 16, 2)  # many exact ties and duplicates
    y = integer_rows(2 * 10, 2, seed=15).view(2, 10, 2)
    got, expected = run_both("kl_entropy_sets", x, None, k, 1.0, EPS, True)
    assert torch.equal(got[2], expected[2])
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    got, expected = run_both("kl_divergence", x, y, None, None, k, 2.0, EPS, True)
    assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
    assert_close(got[1], expected[1], rtol=1e-9, atol=1e-12)
    assert_close(got[2], expected[2], rtol=1e-9, atol=1e-12)


def test_non_finite_rows_follow_the_cpu_op():
    """A NaN query row makes its set's value NaN (and no other set's); a reference row holding
    inf is at distance +inf (NaN read as +inf) from every query row, so it is never chosen."""
    x, y = sets(2, 14, 3, seed=16), sets(2, 10, 3, seed=17)
    x[0, 3, 1] = math.nan
    y[1, 2, 0] = math.inf
    for op in ("kl_cross_entropy", "kl_divergence"):
        got, expected = run_both(op, x, y, None, None, 1, 2.0, EPS, True)
        assert got[0][0].isnan() and got[0][1].isfinite()
        assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
        for g, g_cpu in zip(got[1:], expected[1:]):
            assert torch.equal(g.isnan(), g_cpu.isnan())
            assert_close(g, g_cpu, rtol=1e-9, atol=1e-12)


def test_float32_and_half_inputs():
    """float32 within rounding of the CPU op; half inputs computed in float32 (float32 values),
    gradients in the input dtype."""
    for dtype, rtol in [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)]:
        x, y = sets(2, 15, 4, seed=18, dtype=dtype), sets(2, 12, 4, seed=19, dtype=dtype)
        got, expected = run_both("kl_divergence", x, y, lengths(15, 8), None, 1, 2.0, EPS, True)
        assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
        assert_close(got[0], expected[0], rtol=1e-6, atol=1e-5)
        for g, g_cpu in zip(got[1:], expected[1:]):
            assert_close(g, g_cpu, rtol=rtol, atol=rtol * g_cpu.abs().max().item())


# ---------------------------------------------------------------------------------------------
# Public functions, autograd, backend="auto"
# ---------------------------------------------------------------------------------------------


def test_public_functions_and_their_gradients():
    x, y, v = sets(2, 14, 3, seed=20), sets(2, 11, 3, seed=21), sets(2, 14, 3, seed=22)
    lx = lengths(14, 9)
    results = []
    for backend, device in [("triton", DEVICE), ("cpu", "cpu")]:
        xx, yy = (t.clone().to(device).requires_grad_(True) for t in (x, y))
        weights = torch.tensor([1.0, -2.0], dtype=torch.float64, device=device)
        d = eae_kernels.kl_divergence(xx, yy, 2, p=2.0, lengths_x=lx.to(device), backend=backend)
        c = eae_kernels.kl_cross_entropy(xx, yy, 1, p=1.0, backend=backend)
        l = eae_kernels.koleo_loss(xx, lengths=lx.to(device), backend=backend)
        gx, gy = torch.autograd.grad(((d + c + l) * weights).sum(), (xx, yy))
        # kl_entropy on a batch: twice differentiable (the Hessian-vector product)
        h = eae_kernels.kl_entropy(xx, 1, lengths=lx.to(device), backend=backend)
        (gh,) = torch.autograd.grad(h.sum(), xx, create_graph=True)
        (hv,) = torch.autograd.grad((gh * v.to(device)).sum(), xx)
        results.append([t.detach().cpu() for t in (d, c, l, gx, gy, h, gh, hv)])
    for a, b in zip(*results):
        assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradient_not_computed_raises():
    x, y = sets(1, 12, 2, seed=23), sets(1, 9, 2, seed=24)
    xx = x.to(DEVICE).requires_grad_(True)
    value, _, _ = triton_backend.set_op("kl_divergence")(xx, y.to(DEVICE), None, None, 1, 2.0, EPS, False)
    with pytest.raises(RuntimeError, match="not computed in the forward pass"):
        value.sum().backward()


def test_auto_takes_triton_before_the_reference(monkeypatch):
    """backend="auto" orders cuda -> triton: a cuda entry without the op is passed over."""
    assert set(backends.SET_OPS) <= set(backends.BACKENDS["triton"].ops)
    monkeypatch.setattr(backends, "AUTO_ORDER", {"cpu": ("cuda", "triton"), "cuda": ("cuda", "triton")})
    probe = torch.zeros(2, 3, 2, device=DEVICE)
    for op in backends.SET_OPS:
        assert backends.resolve("auto", op, probe) == "triton"


def test_bad_arguments_raise_clear_errors():
    x = sets(2, 10, 2, seed=25).to(DEVICE)
    with pytest.raises(ValueError, match="lengths_x must be a \\(2,\\) int64"):
        triton_backend.set_op("knn_sets")(x, None, torch.tensor([3, 4], dtype=torch.int32, device=DEVICE), None, 1, 2.0)
    with pytest.raises(ValueError, match="same number of sets, columns"):
        triton_backend.set_op("kl_cross_entropy")(x, x[:, :, :1].contiguous(), None, None, 1, 2.0, EPS, False)
    with pytest.raises(ValueError, match="needs more than k rows"):
        triton_backend.set_op("kl_entropy_sets")(x, None, 10, 2.0, EPS, False)
    with pytest.raises(ValueError, match="row range needs one set"):
        triton_backend.set_op("koleo")(x, None, EPS, False, 0, 5)


# ---------------------------------------------------------------------------------------------
# Compiled for sm_80 and sm_90 (no GPU needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_set_kernels_compile_for_sm80_and_sm90():
    script = Path(__file__).resolve().parent / "scripts" / "triton_aot_compile.py"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, str(script), "sets"], env=env, capture_output=True, text=True, timeout=600)
    if "UNSUPPORTED" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("compiled") == 20


@pytest.mark.subprocess
def test_set_ops_trace_into_their_kernels():
    """The GPU registration (triton_op + wrap_triton) traced as torch.compile does, without a GPU:
    each op decomposes into its kernels (tests/scripts/triton_trace_sets.py)."""
    script = Path(__file__).resolve().parent / "scripts" / "triton_trace_sets.py"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "traced" in done.stdout, done.stderr[-4000:]


def test_opcheck():
    """torch.library's checks of the registrations: schema, fake kernels, autograd."""
    x = sets(2, 12, 2, seed=26, dtype=torch.float32).to(DEVICE).requires_grad_(True)
    y = sets(2, 9, 2, seed=27, dtype=torch.float32).to(DEVICE).requires_grad_(True)
    lx = lengths(12, 6).to(DEVICE)
    ops = torch.ops.eae_kernels
    triton_backend.set_op("knn_sets")  # registers the ops
    torch.library.opcheck(ops.kl_entropy_sets_triton.default, (x, lx, 2, 2.0, EPS, True))
    torch.library.opcheck(ops.kl_divergence_triton.default, (x, y, lx, None, 1, 1.0, EPS, True))
    torch.library.opcheck(ops.koleo_triton.default, (x, None, EPS, True))
    torch.library.opcheck(ops.knn_sets_triton.default, (x, y, lx, None, 2, INF))


@pytest.mark.subprocess
def test_set_kernel_keys_use_fma_without_fp_fusion():
    """As the single-set kernels: with Triton's fusion of multiply-adds off, the p = 2 keys of the
    set kernels are still fma.rn.f32, so neighbours do not depend on Triton's settings."""
    script = Path(__file__).resolve().parent / "scripts" / "triton_fma_keys_sets.py"
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    if "UNSUPPORTED" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert int(done.stdout.split()[-1]) >= 16 * 64 // 128  # one per key of a thread's share of the tile
