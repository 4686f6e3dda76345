"""The Triton backend against the reference and the CPU op: values, gradients, k in {1, 3},
p in {1, 2, inf}, ties, duplicates, NaN rows, row ranges, determinism, half inputs, knn,
opcheck and torch.compile.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 is set
below, before the kernels module is imported). The interpreter is slow, so the inputs are small;
the interpreter's block sizes are 16 (triton_backend.INTERPRETER_SEARCH_CONFIG), so N of 20-50
still spans several row blocks and column tiles with ragged edges. With a GPU the same tests run
the compiled kernels on CUDA tensors.

Every kl_entropy test runs on the three execution paths: the one-program small-batch kernel,
the tiled kernels with the atomic gradient, and the tiled kernels with the deterministic
gather (fixture `path`). Two tests at the end cover what the interpreter cannot, still without a
GPU: the kernels compile for sm_80 and sm_90, and the GPU registration (triton_op) traces into
its kernels as torch.compile does.
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
from eae_kernels import reference, triton_backend  # noqa: E402

from conftest import integer_rows, random_rows  # noqa: E402

# numpy's warnings from inside the interpreter (log(0), inf - inf in the NaN/eps=0 tests).
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
              pytest.mark.slow, pytest.mark.interpreter]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EPS = eae_kernels.DEFAULT_EPS
P_VALUES = (1.0, 2.0, math.inf)

if triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE)) is not None:
    pytest.skip(
        f"triton backend unavailable: {triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE))}",
        allow_module_level=True,
    )

# name -> (small-batch work bound, deterministic)
PATHS = {"small": (1 << 40, False), "tiled-atomic": (0, False), "tiled-gather": (0, True)}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """Forces one execution path; returns its `deterministic` flag."""
    work, deterministic = PATHS[request.param]
    monkeypatch.setattr(triton_backend, "SMALL_BATCH_MAX_WORK", work)
    return deterministic


def triton_op(z, k, p, *, deterministic=False, compute_grad=True, row_begin=0, row_end=-1, eps=EPS):
    """(h, dh/dz, nbr) of the Triton op."""
    op = triton_backend.kl_entropy_op()
    return op(z.to(DEVICE), k, p, eps, compute_grad, deterministic, row_begin, row_end)


def cpu_op(z, k, p, *, row_begin=0, row_end=-1, eps=EPS):
    """(h, dh/dz, nbr) of the CPU op: exact neighbours, the same tie-break."""
    return torch.ops.eae_kernels.kl_entropy(z.cpu(), k, p, eps, True, True, row_begin, row_end)


def reference_value_and_grad(z, k, p, eps=EPS):
    z = z.detach().to(torch.float64).cpu().requires_grad_(True)
    h = reference.kl_entropy(z, k, p, eps)
    (g,) = torch.autograd.grad(h, z)
    return h.detach(), g


def assert_close_to(expected, actual, rtol, atol):
    torch.testing.assert_close(actual.cpu().to(torch.float64), expected.cpu().to(torch.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# kl_entropy: values, gradients, neighbours
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3])
def test_matches_reference_float64(path, k, p):
    z = random_rows(37, 5, seed=k)
    h, g, nbr = triton_op(z, k, p, deterministic=path)
    h_ref, g_ref = reference_value_and_grad(z, k, p)
    assert h.dtype == torch.float64 and g.dtype == torch.float64 and g.shape == z.shape
    assert_close_to(h_ref, h, rtol=1e-12, atol=1e-11)
    assert_close_to(g_ref, g, rtol=1e-9, atol=1e-10)
    assert torch.equal(nbr.cpu(), cpu_op(z, k, p)[2])


@pytest.mark.parametrize("k", [1, 3])
def test_matches_cpu_float32(path, k):
    z = random_rows(45, 7, seed=10 + k, dtype=torch.float32)
    h, g, nbr = triton_op(z, k, 2.0, deterministic=path)
    h_cpu, g_cpu, nbr_cpu = cpu_op(z, k, 2.0)
    assert h.dtype == torch.float32 and g.dtype == torch.float32
    assert_close_to(h_cpu, h, rtol=1e-6, atol=1e-5)
    assert_close_to(g_cpu, g, rtol=1e-4, atol=1e-5 * g_cpu.abs().max().item())
    assert torch.equal(nbr.cpu(), nbr_cpu)


@pytest.mark.parametrize("p", P_VALUES)
def test_wide_rows(path, p):
    """d = 70: several chunks of the atomic epilogue (p = inf: arg-max across chunks) and a
    128-wide gather tile."""
    for n, d in [(33, 6), (20, 70)]:
        z = random_rows(n, d, seed=d)
        h, g, nbr = triton_op(z, 2, p, deterministic=path)
        h_cpu, g_cpu, nbr_cpu = cpu_op(z, 2, p)
        assert_close_to(h_cpu, h, rtol=1e-12, atol=1e-11)
        assert_close_to(g_cpu, g, rtol=1e-9, atol=1e-11)
        assert torch.equal(nbr.cpu(), nbr_cpu)


def test_k_beyond_the_small_list_family(path):
    """k = 9: the list has 16 slots (7 of padding) and uses the large-k configurations."""
    z = random_rows(30, 3, seed=9)
    h, g, nbr = triton_op(z, 9, 2.0, deterministic=path)
    h_cpu, g_cpu, nbr_cpu = cpu_op(z, 9, 2.0)
    assert_close_to(h_cpu, h, rtol=1e-12, atol=1e-11)
    assert_close_to(g_cpu, g, rtol=1e-9, atol=1e-11)
    assert torch.equal(nbr.cpu(), nbr_cpu)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3])
def test_ties_and_duplicates_follow_the_lower_index(path, k, p):
    """Small integers: exact ties everywhere and duplicate rows. The neighbours must be the CPU
    op's (lower index wins) and everything must stay finite."""
    z = integer_rows(34, 2, seed=k)
    h, g, nbr = triton_op(z, k, p, deterministic=path)
    h_cpu, g_cpu, nbr_cpu = cpu_op(z, k, p)
    assert torch.equal(nbr.cpu(), nbr_cpu)
    assert_close_to(h_cpu, h, rtol=1e-12, atol=1e-11)
    assert_close_to(g_cpu, g, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(h) and torch.isfinite(g).all()


def test_duplicates_with_eps_zero_follow_the_cpu_op(path):
    """eps = 0: a duplicate row gives -inf and NaN gradients, exactly where the CPU op does."""
    z = random_rows(20, 3, seed=2)
    z[7] = z[3]
    h, g, _ = triton_op(z, 1, 2.0, deterministic=path, eps=0.0)
    h_cpu, g_cpu, _ = cpu_op(z, 1, 2.0, eps=0.0)
    assert h.item() == -math.inf and h_cpu.item() == -math.inf
    assert torch.equal(g.isnan().cpu(), g_cpu.isnan())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_rows_give_nan(path, bad):
    z = random_rows(22, 3, seed=5)
    z[4, 1] = bad
    h, g, nbr = triton_op(z, 1, 2.0, deterministic=path)
    assert h.isnan()
    assert g[4].isnan().all()
    assert ((nbr >= 0) & (nbr < 22)).all()
    assert torch.isfinite(triton_op(torch.cat([z[:4], z[5:]]), 1, 2.0, deterministic=path)[0])


@pytest.mark.parametrize("p", [2.0, math.inf])
def test_row_ranges_partition_the_estimate(path, p):
    """The h of a partition of the rows sum to H; their gradients sum to dH/dz; their neighbour
    lists concatenate to the full one."""
    z = random_rows(40, 4, seed=7)
    h, g, nbr = triton_op(z, 2, p, deterministic=path)
    parts = [triton_op(z, 2, p, deterministic=path, row_begin=b, row_end=e) for b, e in [(0, 11), (11, 29), (29, 40)]]
    assert_close_to(h, sum(part[0] for part in parts), rtol=1e-12, atol=1e-11)
    assert_close_to(g, sum(part[1] for part in parts), rtol=1e-9, atol=1e-11)
    assert torch.equal(nbr, torch.cat([part[2] for part in parts]))
    h_cpu, g_cpu, nbr_cpu = cpu_op(z, 2, p, row_begin=11, row_end=29)
    assert_close_to(h_cpu, parts[1][0], rtol=1e-12, atol=1e-11)
    assert_close_to(g_cpu, parts[1][1], rtol=1e-9, atol=1e-11)
    assert torch.equal(parts[1][2].cpu(), nbr_cpu)


def test_empty_row_range(path):
    z = random_rows(20, 3)
    h, g, nbr = triton_op(z, 1, 2.0, deterministic=path, row_begin=5, row_end=5)
    assert h.item() == 0.0 and nbr.numel() == 0
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("work", [1 << 40, 0], ids=["small", "tiled-gather"])
def test_deterministic_mode_is_bit_identical(work, monkeypatch):
    monkeypatch.setattr(triton_backend, "SMALL_BATCH_MAX_WORK", work)
    z = random_rows(40, 4, seed=3, dtype=torch.float32)
    first = triton_op(z, 3, 2.0, deterministic=True)
    second = triton_op(z, 3, 2.0, deterministic=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(path, dtype):
    """Half inputs are widened on load: H is float32 and matches the CPU op on the same (rounded)
    values; the gradient comes back in the input dtype (accumulated in fp32, rounded once)."""
    z = random_rows(30, 4, seed=11, dtype=dtype)
    h, g, nbr = triton_op(z, 1, 2.0, deterministic=path)
    h_cpu, g_cpu, nbr_cpu = cpu_op(z, 1, 2.0)
    assert h.dtype == torch.float32 and g.dtype == dtype
    assert_close_to(h_cpu, h, rtol=1e-6, atol=1e-5)
    assert_close_to(g_cpu, g, rtol=2e-2, atol=1e-2 * g_cpu.abs().max().item())
    assert torch.equal(nbr.cpu(), nbr_cpu)


def test_strided_inputs_equal_their_contiguous_copy(path, request):
    """The glue makes z contiguous, so a transposed input runs the very kernels of its copy: the
    same bits, except the atomic gradient, whose order of float additions is never fixed."""
    base = random_rows(5, 31, seed=4, dtype=torch.float32)
    z = base.t()  # (31, 5) with strides (1, 31)
    assert not z.is_contiguous()
    h, g, nbr = triton_op(z, 2, 1.0, deterministic=path)
    h_c, g_c, nbr_c = triton_op(z.contiguous(), 2, 1.0, deterministic=path)
    assert torch.equal(h, h_c) and torch.equal(nbr, nbr_c)
    if request.node.callspec.params["path"] == "tiled-atomic":
        assert_close_to(g_c, g, rtol=1e-6, atol=1e-6 * g_c.abs().max().item())
    else:
        assert torch.equal(g, g_c)


@pytest.mark.parametrize("p", P_VALUES)
def test_deterministic_bits_do_not_depend_on_block_sizes(path, p, monkeypatch, request):
    """What the autotuner chooses on a GPU (block sizes) must not change a deterministic result:
    every sum is in a fixed order. The small and tiled-gather paths even agree with each other.
    (float64: a float32 H would hide a different grouping of the float64 sum in its rounding.)"""
    if request.node.callspec.params["path"] == "tiled-atomic":
        pytest.skip("the atomic gradient is not deterministic")
    z = random_rows(45, 6, seed=21)
    results = []
    for block_m, block_n in [(16, 16), (8, 32), (32, 8)]:
        monkeypatch.setitem(triton_backend.INTERPRETER_SEARCH_CONFIG, "BLOCK_M", block_m)
        monkeypatch.setitem(triton_backend.INTERPRETER_SEARCH_CONFIG, "BLOCK_N", block_n)
        results.append(triton_op(z, 2, p, deterministic=True))
    monkeypatch.setattr(triton_backend, "SMALL_BATCH_MAX_WORK", 1 << 40)  # and the small path
    results.append(triton_op(z, 2, p, deterministic=True))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Through the public API: autograd, double backward, forward only
# ---------------------------------------------------------------------------------------------


def test_public_api_gradient_and_double_backward():
    z = random_rows(24, 3, seed=6).to(DEVICE)
    v = random_rows(24, 3, seed=8).to(DEVICE)
    results = []
    for backend, zz in [("triton", z), ("cpu", z.cpu())]:
        x = zz.clone().requires_grad_(True)
        h = eae_kernels.kl_entropy(x, 2, p=2.0, backend=backend)
        (g,) = torch.autograd.grad(h, x, create_graph=True)
        (hv,) = torch.autograd.grad((g * v.to(zz.device)).sum(), x)
        results.append((h.detach().cpu(), g.detach().cpu(), hv.cpu()))
    for a, b in zip(*results):
        assert_close_to(b, a, rtol=1e-9, atol=1e-11)


def test_forward_only_and_missing_gradient():
    z = random_rows(20, 3, seed=1)
    h, g, nbr = triton_op(z, 1, 2.0, compute_grad=False)
    assert g.numel() == 0 and nbr.numel() == 0
    assert_close_to(cpu_op(z, 1, 2.0)[0], h, rtol=1e-12, atol=1e-11)
    x = z.to(DEVICE).requires_grad_(True)
    h, _, _ = triton_backend.kl_entropy_op()(x, 1, 2.0, EPS, False, False)
    with pytest.raises(RuntimeError, match="not computed in the forward pass"):
        h.backward()


# ---------------------------------------------------------------------------------------------
# knn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3])
def test_knn_matches_reference(k, p):
    z = integer_rows(29, 3, seed=k) + 0.25 * random_rows(29, 3, seed=k)  # some exact ties left
    z[5] = z[9]  # a duplicate
    x = z.clone().to(DEVICE).requires_grad_(True)
    dist, idx = eae_kernels.knn_distances(x, k, p=p, backend="triton")
    x_ref = z.clone().requires_grad_(True)
    dist_ref, idx_ref = reference.knn_distances(x_ref, k, p)
    assert torch.equal(idx.cpu(), idx_ref)
    assert_close_to(dist_ref, dist, rtol=1e-12, atol=1e-12)
    weights = random_rows(29, k, seed=3)
    (g,) = torch.autograd.grad((dist * weights.to(DEVICE)).sum(), x)
    (g_ref,) = torch.autograd.grad((dist_ref * weights).sum(), x_ref)
    assert_close_to(g_ref, g, rtol=1e-9, atol=1e-11)


def test_knn_non_finite_row_gives_nan_distances():
    z = random_rows(20, 2, seed=2)
    z[3, 0] = math.nan
    dist, idx = triton_backend.knn_op()(z.to(DEVICE), 2, 2.0)
    assert dist[3].isnan().all() and not dist[0].isnan().any()
    assert ((idx >= 0) & (idx < 20)).all()


def test_knn_overflowing_distances_stay_inf_like_cpu():
    """Finite rows whose distances overflow float32 give +inf (not NaN), as on the CPU and CUDA;
    a row next to a non-finite one still gives NaN."""
    z = torch.zeros(12, 2)
    z[:10, 0] = torch.arange(10) * 1e30
    z[10, 1] = math.inf
    z[11, 0] = -1e30
    for p in P_VALUES:
        dist, idx = triton_backend.knn_op()(z.to(DEVICE), 1, p)
        dist_cpu, idx_cpu = torch.ops.eae_kernels.knn(z, 1, p)
        assert torch.equal(idx.cpu(), idx_cpu)
        torch.testing.assert_close(dist.cpu(), dist_cpu, rtol=1e-6, atol=0, equal_nan=True)
        assert dist[10].isnan().all()
    dist2, _ = triton_backend.knn_op()(z.to(DEVICE), 1, 2.0)  # the case this test is about
    assert dist2[:10].isinf().all() and torch.ops.eae_kernels.knn(z, 1, 2.0)[0][:10].isinf().all()


def test_knn_half_input_gives_float32_distances():
    z = random_rows(20, 3, seed=4, dtype=torch.bfloat16)
    dist, idx = triton_backend.knn_op()(z.to(DEVICE), 2, 1.0)
    dist_cpu, idx_cpu = torch.ops.eae_kernels.knn(z, 2, 1.0)
    assert dist.dtype == torch.float32
    assert torch.equal(idx.cpu(), idx_cpu)
    assert_close_to(dist_cpu, dist, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Composition with PyTorch, arguments, helpers
# ---------------------------------------------------------------------------------------------


def test_opcheck():
    z = random_rows(12, 3, seed=1).to(DEVICE)
    torch.library.opcheck(triton_backend.kl_entropy_op(), (z, 1, 2.0, EPS, True, False))
    torch.library.opcheck(triton_backend.kl_entropy_op(), (z, 2, 1.0, EPS, False, True, 3, 9))
    torch.library.opcheck(triton_backend.knn_op(), (z, 2, math.inf))


def test_compile_fullgraph():
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"  # the interpreter is eager-only

    def loss(x):
        return eae_kernels.kl_entropy(x, 1, backend="triton")

    z = random_rows(20, 3, seed=5).to(DEVICE)
    x1, x2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    torch.compile(loss, fullgraph=True, backend=backend)(x1).backward()
    loss(x2).backward()
    assert torch.equal(x1.grad, x2.grad)


def test_bad_arguments_raise_clear_errors():
    z = random_rows(10, 2).to(DEVICE)
    with pytest.raises(ValueError, match="row_begin"):
        triton_op(z, 1, 2.0, row_begin=4, row_end=3)
    with pytest.raises(ValueError, match="p must be 1, 2"):
        triton_op(z, 1, 3.0)
    with pytest.raises(ValueError, match="N > k"):
        triton_op(z, 10, 2.0)


def test_unavailable_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "needs a CUDA tensor or TRITON_INTERPRET=1" in triton_backend.unavailable_reason(torch.zeros(2, 1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_backend.unavailable_reason(torch.zeros(2, 1)) is None
    assert "needs a CUDA tensor" in triton_backend.unavailable_reason(torch.zeros(2, 1, device="meta"))


@pytest.mark.parametrize("n, d, k, p", [(2, 1, 1, 2.0), (19, 3, 2, 1.0), (20, 64, 3, math.inf), (1000, 128, 5, 2.0)])
def test_constant_matches_the_reference(n, d, k, p):
    expected = reference.kl_constant(n, d, k, p)
    assert triton_backend._kl_constant(n, d, k, p) == pytest.approx(expected, rel=1e-14, abs=1e-13)


def test_large_n_times_fewer_candidates():
    import triton

    configs = triton_backend._configs(triton, triton_backend._SEARCH_SHAPES)
    small_n = triton_backend._prune_for_large_n(configs, {"n_bucket": 16})
    large_n = triton_backend._prune_for_large_n(configs, {"n_bucket": triton_backend.LARGE_N_BUCKET})
    assert len(small_n) == len(configs) == 7
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in large_n] == [(8, 1024), (16, 512), (16, 256)]


# Compiles kernel variants for real GPUs in a fresh process (the interpreter is off there), with
# Triton's bundled ptxas and no GPU: catches what the interpreter cannot (lowering, typing,
# Triton's compile-time checks). Each line: kernel, signature dtypes, constexprs, num_warps.
_AOT_SCRIPT = SCRIPTS / "triton_aot_compile.py"


@pytest.mark.subprocess
def test_kernels_compile_for_sm80_and_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, str(_AOT_SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    if "UNSUPPORTED" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("compiled") == 16


# The GPU registration path (triton_op + wrap_triton), traced the way torch.compile does it
# (AOTAutograd, dynamic shapes) in a process without the interpreter: the op must decompose into
# its kernels (small path: 1; tiled: search + sum; deterministic tiled: + gather), without a GPU
# because fake tensors never launch anything.
_TRACE_SCRIPT = SCRIPTS / "triton_trace.py"


# The p = 2 keys use an explicit fma: with Triton's fusion of multiply-adds off (the default from
# Triton 3.10 on), the search loop must still be fma.rn.f32, so the keys (and the neighbours at
# near-ties) do not depend on the Triton version or its settings.
_FMA_SCRIPT = SCRIPTS / "triton_fma_keys.py"


@pytest.mark.subprocess
def test_distance_keys_use_fma_without_fp_fusion():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    done = subprocess.run([sys.executable, str(_FMA_SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    if "UNSUPPORTED" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-4000:]
    assert int(done.stdout.split()[-1]) >= 16 * 64 // 128  # one per key of a thread's share of the tile


@pytest.mark.subprocess
def test_triton_op_traces_into_its_kernels():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(_TRACE_SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "traced" in done.stdout, done.stderr[-4000:]
