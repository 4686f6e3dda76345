"""The Triton certified tensor-core search (EAE_KERNELS_SEARCH=mixed, eae_kernels/triton_mixed.py)
against the exact Triton search: the neighbours, the k-th distances (through the per-row log
terms), H and the gradient must be bit-identical (torch.equal), on a grid of small shapes and on
inputs built to widen the candidate band or to break a careless bound; the bound itself is
checked pair by pair in float64, with accumulation orders and roundings the interpreter does not
have (tensor cores: unspecified order, truncation); and the kernels must compile for sm_80/sm_90.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1), where tl.dot is a
float32 numpy product: the bound test covers the other accumulation behaviours in Python.
Everything that runs kernels or compiles is in the slow tier (the interpreter is slow); the quick
tier keeps the bound, the flags and the mode rule.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import eae_kernels  # noqa: E402
from eae_kernels import triton_backend  # noqa: E402

from conftest import HALF_DTYPES, adversarial_rows, clustered, integer_rows, random_rows  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
              pytest.mark.interpreter]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EPS = eae_kernels.DEFAULT_EPS

if triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE)) is not None:
    pytest.skip("triton backend unavailable", allow_module_level=True)

from eae_kernels import triton_mixed  # noqa: E402  (imports triton)


@pytest.fixture(autouse=True)
def _count_blocks(monkeypatch):
    monkeypatch.setattr(triton_mixed, "COUNT_BLOCKS", True)
    monkeypatch.setattr(triton_mixed, "_STATS", [])


def run(z, k, mode, monkeypatch, *, deterministic=True, row_begin=0, row_end=-1, compute_grad=True):
    """(h, dh/dz, nbr) of the Triton op with the search forced to `mode`."""
    monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
    op = triton_backend.kl_entropy_op()
    return op(z.to(DEVICE), k, 2.0, EPS, compute_grad, deterministic, row_begin, row_end)


def assert_same_bits(exact, mixed, names=("H", "grad", "nbr")):
    for name, a, b in zip(names, exact, mixed):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.is_floating_point():
            assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaNs differ"
            a, b = a[~a.isnan()], b[~b.isnan()]
        assert torch.equal(a, b), f"{name} differs"


def knn(z, k, mode, monkeypatch):
    monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
    return triton_backend.knn_op()(z.to(DEVICE), k, 2.0)


def assert_bit_identical(z, k, monkeypatch, with_knn=True, **kw):
    """mixed == exact, bit for bit, for the kl_entropy op (H, gradient, k-th neighbours) and,
    without keywords, the knn op (all k distances and indices); returns (row blocks refined, row
    blocks searched exactly) of the kl_entropy call."""
    exact = run(z, k, "exact", monkeypatch, **kw)
    calls, refined, fell_back = triton_mixed.stats()
    mixed = run(z, k, "mixed", monkeypatch, **kw)
    calls2, refined2, fell_back2 = triton_mixed.stats()
    assert calls2 == calls + 1, "the mixed path did not run"
    assert_same_bits(exact, mixed)
    if with_knn and not kw:
        exact_knn, mixed_knn = knn(z, k, "exact", monkeypatch), knn(z, k, "mixed", monkeypatch)
        assert triton_mixed.stats()[0] == calls2 + 1, "the mixed knn path did not run"
        assert_same_bits(exact_knn, mixed_knn, ("distances", "indices"))
    return refined2 - refined, fell_back2 - fell_back


# The interpreter's cost is per operation, not per element: wider blocks for the larger inputs
# keep the grid fast (no result depends on the block sizes).
def blocks(monkeypatch, n):
    size = 16 if n < 64 else 64
    monkeypatch.setitem(triton_backend.INTERPRETER_SEARCH_CONFIG, "BLOCK_M", size)
    monkeypatch.setitem(triton_backend.INTERPRETER_SEARCH_CONFIG, "BLOCK_N", size)
    for key in ("BLOCK_M", "BLOCK_N", "REFINE_M", "REFINE_N"):
        monkeypatch.setitem(triton_mixed.INTERPRETER_CONFIG, key, size)
    monkeypatch.setattr(triton_backend, "_INTERPRETER_GATHER_SCAN", size)


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, 3, 16, 64])
@pytest.mark.parametrize("n", [2, 17, 100, 300])
def test_grid_is_bit_identical(n, d, monkeypatch):
    """float32 with k in {1, 2, 5}; the half dtypes with k = 2 (k in {1, 5} at N = 300, float32
    only: the interpreter is slow)."""
    blocks(monkeypatch, n)
    for i, dtype in enumerate((torch.float32, *HALF_DTYPES) if n <= 100 else (torch.float32,)):
        z = random_rows(n, d, seed=1000 * n + d + i, dtype=torch.float32).to(dtype)
        for k in (1, 2, 5) if dtype == torch.float32 and n <= 100 else (1, 5) if n > 100 else (2,):
            if k < n:
                assert_bit_identical(z, k, monkeypatch, with_knn=dtype == torch.float32)


@pytest.mark.slow
def test_candidates_do_the_work_on_plain_data(monkeypatch):
    """On Gaussian rows the candidate lists suffice: no row block falls back to the exact search
    (so the refinement, not the fallback, is what the grid above checks), with either dot input."""
    blocks(monkeypatch, 160)
    z = random_rows(160, 16, seed=3, dtype=torch.float32)
    for dot_input in ("tf32", "bf16"):
        monkeypatch.setattr(triton_mixed, "DOT_INPUT", dot_input)
        for k in (1, 5):
            refined, fell_back = assert_bit_identical(z, k, monkeypatch)
            assert refined > 0 and fell_back == 0, (dot_input, k)


@pytest.mark.slow
def test_non_deterministic_flag_row_ranges_and_forward_only(monkeypatch):
    """The mixed path always gathers the gradient, so deterministic=False gives the bits of the
    exact deterministic path; row ranges (the distributed mode) and compute_grad=False too."""
    blocks(monkeypatch, 100)
    z = random_rows(100, 8, seed=4, dtype=torch.float32)
    exact = run(z, 3, "exact", monkeypatch, deterministic=True)
    assert_same_bits(exact, run(z, 3, "mixed", monkeypatch, deterministic=False))
    assert_bit_identical(z, 3, monkeypatch, row_begin=17, row_end=71)
    assert_bit_identical(z, 3, monkeypatch, compute_grad=False)


def test_modes_and_auto_rule(monkeypatch):
    z = torch.zeros(20000, 64)
    for mode, expected in (("exact", False), ("mixed", True), ("bogus", False), ("auto", False)):
        monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
        assert triton_mixed.wanted(z, 1, 2.0, 20000) == expected, mode  # auto: CPU tensor
    monkeypatch.setenv("EAE_KERNELS_SEARCH", "mixed")
    assert not triton_mixed.wanted(z, 1, 1.0, 20000)  # L2 only
    assert not triton_mixed.wanted(z.double(), 1, 2.0, 20000)  # float64 stays exact
    assert not triton_mixed.wanted(z, 17, 2.0, 20000)
    assert not triton_mixed.wanted(z, 1, 2.0, 0)


def adversarial_inputs():
    """The shared adversarial rows at a size the interpreter runs quickly, and the cases of the
    Triton glue (inf values, half inputs)."""
    yield from adversarial_rows(120, 12)
    z = random_rows(120, 12, seed=11, dtype=torch.float32)
    yield "inf value", torch.cat([z[:40], torch.tensor([[math.inf] + [0.0] * 11])])
    yield "half: bfloat16 ties", integer_rows(100, 6, seed=19).to(torch.bfloat16)
    yield "half: float16 + offset", (random_rows(100, 6, seed=20) + 300).to(torch.float16)


@pytest.mark.slow
@pytest.mark.parametrize("name,z", list(adversarial_inputs()), ids=lambda v: v if isinstance(v, str) else "")
def test_adversarial_inputs_are_bit_identical(name, z, monkeypatch):
    blocks(monkeypatch, z.shape[0])
    for k in (1, 5):
        assert_bit_identical(z, k, monkeypatch)


@pytest.mark.slow
def test_wide_bands_fall_back_per_block(monkeypatch):
    """Clusters much tighter than the dot's rounding cannot be pruned: their row blocks run the
    exact search (counted), the other blocks keep the candidate lists, and the result is still
    the exact one. (A row whose current k-th value ties with a whole cluster records the cluster:
    so the cluster sits in the last columns, after the other rows' lists have settled.)"""
    blocks(monkeypatch, 200)
    monkeypatch.setitem(triton_mixed.INTERPRETER_CONFIG, "REFINE_M", 16)
    z = random_rows(200, 16, seed=22, dtype=torch.float32)
    z[120:] = z[0] + 1e-7 * random_rows(80, 16, seed=21, dtype=torch.float32)  # inside the data, not far out
    refined, fell_back = assert_bit_identical(z, 1, monkeypatch)
    assert fell_back > 0 and refined > 0


# ---------------------------------------------------------------------------------------------
# The bound itself, pair by pair, in float64
# ---------------------------------------------------------------------------------------------


def _chop(x64: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded toward zero (truncating hardware)."""
    x32 = x64.astype(np.float32)
    over = np.abs(x32.astype(np.float64)) > np.abs(x64)
    return np.where(over, np.nextafter(x32, np.float32(0)), x32)


def approximate_w(y: np.ndarray, norm32: np.ndarray, how: str) -> np.ndarray:
    """w_ij = n_j - 2 y_i.y_j with float32 accumulation in several orders and roundings."""
    y = y.astype(np.float32)
    if how == "blas":
        g = y @ y.T
    elif how == "blocks of 8, aligned and truncated":
        # The tensor-core model: the running sum and 8 exact products aligned to the largest
        # exponent, each truncated to 24 bits there (no guard bits), summed, truncated to fp32.
        g = np.zeros((y.shape[0], y.shape[0]), dtype=np.float64)
        for c0 in range(0, y.shape[1], 8):
            terms = [g] + [np.outer(y[:, c], y[:, c]).astype(np.float64) for c in range(c0, min(c0 + 8, y.shape[1]))]
            _, e = np.frexp(np.max(np.abs(np.stack(terms)), axis=0))
            ulp = np.ldexp(1.0, e - 24)
            g = _chop(sum(np.trunc(t / ulp) * ulp for t in terms)).astype(np.float64)
        g = g.astype(np.float32)
    else:
        order = np.arange(y.shape[1])
        if how == "reversed":
            order = order[::-1]
        elif how == "shuffled":
            order = np.random.default_rng(0).permutation(order)
        g = np.zeros((y.shape[0], y.shape[0]), dtype=np.float32)
        for c in order:
            prod = np.outer(y[:, c], y[:, c]).astype(np.float64)  # exact: tf32/bf16 operands
            s = g.astype(np.float64) + prod
            g = _chop(s) if how == "truncating" else s.astype(np.float32)
    w = norm32[None, :].astype(np.float32) - np.float32(2) * g
    return w.astype(np.float64)


def exact_keys32(z: torch.Tensor) -> np.ndarray:
    """The exact kernel's float32 keys (z_i - z_j, fma per coordinate in order), emulated: the
    product of two float32 is exact in float64, one rounding of the sum to float32 (the float64
    sum is itself rounded first: a rare 1-ulp double rounding, far inside the bound's margins)."""
    x = z.float().numpy()
    acc = np.zeros((x.shape[0], x.shape[0]), dtype=np.float32)
    for c in range(x.shape[1]):
        diff = (x[:, None, c] - x[None, :, c]).astype(np.float32)
        acc = (diff.astype(np.float64) ** 2 + acc.astype(np.float64)).astype(np.float32)
    return acc.astype(np.float64)


def bound_inputs():
    yield "gaussian", random_rows(80, 24, seed=30, dtype=torch.float32)
    yield "offset 1e4", random_rows(80, 24, seed=31, dtype=torch.float32) + 1e4
    yield "near-duplicates", torch.cat([random_rows(40, 8, seed=32, dtype=torch.float32)] * 2)
    yield "clusters 1e-6", clustered(80, 16, 4, 1e-6, seed=33)
    yield "heavy tails", (random_rows(80, 32, seed=34) ** 7).float()
    yield "outlier", torch.cat([random_rows(79, 8, seed=35, dtype=torch.float32), torch.full((1, 8), 1e5)])
    yield "tiny", random_rows(80, 8, seed=36, dtype=torch.float32) * 1e-20
    yield "large", random_rows(80, 8, seed=37, dtype=torch.float32) * 1e17
    yield "d = 1", random_rows(80, 1, seed=38, dtype=torch.float32)
    yield "d = 256", random_rows(40, 256, seed=39, dtype=torch.float32)


@pytest.mark.parametrize("dot_input", ["tf32", "bf16"])
@pytest.mark.parametrize("name,z", list(bound_inputs()), ids=lambda v: v if isinstance(v, str) else "")
def test_bound_holds_pair_by_pair(name, z, dot_input):
    """For every pair: the true distance (float64) and the exact float32 key lie within the
    interval the bound derives from the approximate value w, for float32 products accumulated in
    BLAS order, in order, reversed, shuffled, truncating, and in truncated exponent-aligned blocks
    (the tensor-core model); the kernel's per-row threshold
    (step 4: the reach W_i, with n_max and delta_max) admits every pair whose key can be <= the
    k-th upper bound."""
    n, d = z.shape
    prep = triton_mixed.prepare(z, dot_input)
    assert prep["consts"][3] == 0
    y = prep["y"][:, :d].to(torch.float32)
    scale = prep["scale"].item()
    assert math.frexp(scale)[0] == 0.5  # a power of two
    if dot_input == "tf32":
        assert torch.equal(triton_mixed.round_to_tf32(y), y)
    x = z.double()
    true_r2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).numpy() * scale * scale
    keys = exact_keys32(z) * scale * scale
    off = ~np.eye(n, dtype=bool)
    c = triton_mixed.host_constants(d)
    for how in ("blas", "in order", "reversed", "shuffled", "truncating", "blocks of 8, aligned and truncated"):
        w = approximate_w(y.numpy(), prep["norm32"].numpy(), how)
        lo, hi = (t.numpy() for t in triton_mixed.pair_interval(torch.from_numpy(w), prep, d))
        for what, value in (("true r^2", true_r2), ("exact key", keys)):
            assert (lo[off] <= value[off]).all(), (how, what, "below the lower bound")
            assert (value[off] <= hi[off]).all(), (how, what, "above the upper bound")
        # The kernel's reach from the k-th smallest w of each row (k = 3): every pair whose exact
        # key is at most the row's k-th exact key must have w <= reach.
        w_off = np.where(off, w, np.inf)
        q = np.sort(w_off, axis=1)[:, 2]
        reach = _reach_like_the_kernel(q, prep, c)
        kth_key = np.sort(np.where(off, keys, np.inf), axis=1)[:, 2]
        needed = off & (keys <= kth_key[:, None])
        assert (w[needed] <= np.broadcast_to(reach[:, None], w.shape)[needed]).all(), how


def _reach_like_the_kernel(q, prep, c):
    """_reach of triton_mixed in numpy float64 (same steps, same margins)."""
    m = 1 + 2.0**-20
    ni = prep["norm"].numpy()
    n_max, delta_max = prep["consts"][1].item(), prep["consts"][2].item()
    u_key = prep["consts"][0].item()
    ei = (c["err_rel"] * (ni + 2 * n_max) + c["err_abs"]) * m
    spread = (prep["delta"].numpy() + delta_max) * m
    s2 = np.maximum(q + ni + ei + (np.abs(q) + ni + ei) * 2.0**-40, 0)
    r_hi = np.sqrt(s2) * m + spread
    key_hi = (c["grow"] * r_hi * r_hi * m + u_key) * m
    rho = np.sqrt((key_hi + u_key) / c["shrink"] * m) * m
    s_max = (rho + spread) * m
    w = s_max**2 - ni + ei + (s_max**2 + ni + ei) * 2.0**-40
    return (w + np.abs(w) * 2.0**-20 + 2.0**-120).astype(np.float32).astype(np.float64)


def test_non_finite_or_huge_values_are_flagged():
    z = random_rows(20, 3, seed=40, dtype=torch.float32)
    assert triton_mixed.prepare(z)["consts"][3] == 0
    for bad in (z * 3e18, torch.cat([z, torch.full((1, 3), math.nan)]), torch.cat([z, torch.full((1, 3), math.inf)])):
        assert triton_mixed.prepare(bad)["consts"][3] == 1


# ---------------------------------------------------------------------------------------------
# Lowering for real GPUs (no GPU needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_kernels_compile_for_sm80_and_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"  # the exact keys must still be fma (explicit tl.fma)
    done = subprocess.run([sys.executable, str(SCRIPTS / "triton_mixed_aot_compile.py")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if "UNSUPPORTED" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("compiled") == 10, done.stdout
    assert done.stdout.count(" mma ") == 6, done.stdout  # tl.dot on tensor cores, tf32/bf16 operands
    assert done.stdout.count(" fma") == 4, done.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_mixed_ops_trace_into_their_kernels():
    """torch.compile's view of the GPU registration (triton_op) with the mixed search forced."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPTS / "triton_mixed_trace.py")], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0 and "traced" in done.stdout, done.stderr[-4000:]
