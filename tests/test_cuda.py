"""CUDA-specific checks of the CUDA C++ backend (csrc/cuda/): every execution path and searcher
against the CPU op (same semantics, same keys), determinism, CUDA-graph capture, the one-launch
small-batch path, half inputs, alignment, and torch.compile.

The generic contract (values against the reference, gradcheck, ties, NaN, ...) runs for the
'cuda' backend in the device-parametrised suite (conftest.fused_backends). Everything here skips
without a GPU or without the compiled CUDA kernels.

The backend's knobs, read on every call (csrc/cuda/kl_cuda.cu):
  EAE_KERNELS_CUDA_PATH = atomic | gather   the gradient path (default: fused for N <= 1024 and
                                            d <= 256, else atomic, or gather if deterministic)
  EAE_KERNELS_CUDA_TILE = small | large | list   the searcher (default: by N and k)
"""

from __future__ import annotations

import math

import pytest
import torch

import eae_kernels
from eae_kernels import _extension, reference

from conftest import integer_rows, random_rows

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not _extension.with_cuda():
    pytest.skip("eae_kernels._C was built without its CUDA kernels", allow_module_level=True)

EPS = eae_kernels.DEFAULT_EPS
P_VALUES = (1.0, 2.0, math.inf)
OP = torch.ops.eae_kernels


@pytest.fixture(params=["fused", "atomic", "gather"])
def path(request, monkeypatch):
    """Forces a gradient path (fused is the default for the small inputs used here)."""
    if request.param != "fused":
        monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", request.param)
    return request.param


@pytest.fixture(params=["small", "large", "list"])
def tile(request, monkeypatch):
    monkeypatch.setenv("EAE_KERNELS_CUDA_TILE", request.param)
    return request.param


def entropy(z, k, p, *, deterministic=False, compute_grad=True, row_begin=0, row_end=-1, eps=EPS):
    """(h, dh/dz, nbr) of the compiled op on z's device."""
    return OP.kl_entropy(z, k, p, eps, compute_grad, deterministic, row_begin, row_end)


def assert_matches_cpu(z, k, p, *, deterministic=False, row_begin=0, row_end=-1, rtol=1e-5, path=None):
    """The CUDA op against the CPU op on the same data: the same neighbours exactly, h and dh/dz
    to rounding (the atomic path sums in another order). `path` forces a gradient path."""
    with pytest.MonkeyPatch.context() as mp:
        if path is not None:
            mp.setenv("EAE_KERNELS_CUDA_PATH", path)
        h, grad, nbr = entropy(z, k, p, deterministic=deterministic, row_begin=row_begin, row_end=row_end)
    h_cpu, grad_cpu, nbr_cpu = entropy(z.cpu(), k, p, row_begin=row_begin, row_end=row_end)
    assert h.dtype == h_cpu.dtype and h.shape == () and grad.dtype == z.dtype
    assert torch.equal(nbr.cpu(), nbr_cpu), "k-th neighbours differ from the CPU op"
    torch.testing.assert_close(h.cpu(), h_cpu, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(grad.cpu(), grad_cpu, rtol=rtol, atol=1e-6 * grad_cpu.abs().max().item())


# ---------------------------------------------------------------------------------------------
# Values and neighbours: every path, searcher, k class, norm and dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3, 20])  # register lists of 1 and 4, the list search beyond 16
@pytest.mark.parametrize("n, d", [(21, 3), (300, 16), (700, 70)])
def test_entropy_matches_cpu_on_every_path(path, n, d, k, p):
    if n <= k:
        pytest.skip("needs N > k")
    z = random_rows(n, d, seed=n + d, dtype=torch.float32).cuda()
    assert_matches_cpu(z, k, p, deterministic=path == "gather")


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 4, 16])
def test_every_searcher_matches_cpu(tile, p, k):
    z = random_rows(333, 21, seed=k, dtype=torch.float32).cuda()  # ragged tiles and chunks
    assert_matches_cpu(z, k, p)  # fused path
    assert_matches_cpu(z, k, p, deterministic=True, path="gather")
    dist, idx = OP.knn(z, k, p)
    dist_cpu, idx_cpu = OP.knn(z.cpu(), k, p)
    assert torch.equal(idx.cpu(), idx_cpu)
    torch.testing.assert_close(dist.cpu(), dist_cpu, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1500, 5000])  # beyond the fused path: large or small tiles by N
def test_larger_batches_match_cpu(dtype, n, path):
    if path == "fused":
        pytest.skip("N > 1024 never takes the fused path")
    z = random_rows(n, 48, seed=n, dtype=dtype).cuda()
    assert_matches_cpu(z, 1, 2.0, deterministic=path == "gather", rtol=1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 2, 5, 17])
def test_exact_ties_take_the_lower_index_like_cpu(path, tile, p, k):
    z = integer_rows(257, 3, seed=k).to(torch.float32).cuda()  # many exact ties and duplicates
    assert_matches_cpu(z, k, p, deterministic=path == "gather")
    _, idx = OP.knn(z, k, p)
    assert torch.equal(idx.cpu(), OP.knn(z.cpu(), k, p)[1])


def test_against_the_reference():
    z = random_rows(500, 32, seed=7).cuda().requires_grad_()
    h = eae_kernels.kl_entropy(z, 3, backend="cuda")
    (g,) = torch.autograd.grad(h, z)
    z_ref = z.detach().clone().requires_grad_()
    h_ref = reference.kl_entropy(z_ref, 3)
    (g_ref,) = torch.autograd.grad(h_ref, z_ref)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Row ranges, empty ranges, non-finite input, alignment, half inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_row_ranges_partition_h_and_match_cpu(path, k):
    z = random_rows(400, 12, seed=3, dtype=torch.float64).cuda()
    full = entropy(z, k, 2.0)[0]
    parts = [entropy(z, k, 2.0, row_begin=b, row_end=e)[0] for b, e in [(0, 150), (150, 151), (151, 400)]]
    torch.testing.assert_close(sum(parts), full, rtol=1e-12, atol=1e-12)
    assert_matches_cpu(z, k, 2.0, row_begin=37, row_end=290, deterministic=path == "gather")


def test_empty_row_range_gives_zero_h_and_gradient():
    z = random_rows(50, 4, dtype=torch.float32).cuda()
    h, grad, nbr = entropy(z, 1, 2.0, row_begin=20, row_end=20)
    assert h.item() == 0.0 and nbr.numel() == 0 and torch.count_nonzero(grad).item() == 0


@pytest.mark.parametrize("p", P_VALUES)
def test_non_finite_rows_like_cpu(tile, p):
    z = random_rows(90, 5, seed=1, dtype=torch.float32)
    z[7, 2] = math.nan
    z[40, 0] = math.inf
    z = z.cuda()
    k = 2 if tile != "list" else 18
    assert math.isnan(entropy(z, k, p)[0].item())
    dist, idx = OP.knn(z, k, p)
    dist_cpu, idx_cpu = OP.knn(z.cpu(), k, p)
    assert torch.equal(idx.cpu(), idx_cpu) and bool(((idx >= 0) & (idx < 90)).all())
    torch.testing.assert_close(dist.cpu(), dist_cpu, rtol=1e-6, atol=0, equal_nan=True)
    assert bool(dist[7].isnan().all()) and bool(dist[40].isnan().all())


def test_overflowing_distances_stay_inf_like_cpu():
    z = torch.zeros(10, 2)
    z[:, 0] = torch.arange(10) * 1e30  # finite rows whose squared distances overflow float32
    dist, idx = OP.knn(z.cuda(), 1, 2.0)
    dist_cpu, idx_cpu = OP.knn(z, 1, 2.0)
    assert torch.equal(idx.cpu(), idx_cpu)
    torch.testing.assert_close(dist.cpu(), dist_cpu, rtol=1e-6, atol=0)
    assert bool(dist.isinf().all())


@pytest.mark.parametrize("d", [3, 4, 17])
def test_unaligned_and_strided_inputs(d):
    """Rows not 16-byte aligned (or d not a multiple of 4) take the element-wise copies."""
    base = random_rows(201 * d + 1, 1, seed=d, dtype=torch.float32).cuda().flatten()
    z = base[1:].view(201, d)  # 4-byte offset from the allocation
    assert_matches_cpu(z, 2, 2.0)
    zt = random_rows(d, 150, seed=d, dtype=torch.float32).cuda().t()  # non-contiguous
    assert_matches_cpu(zt, 1, 1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    z = random_rows(300, 8, seed=2).to(dtype).cuda()
    h, grad, nbr = entropy(z, 1, 2.0)
    h32, grad32, nbr32 = entropy(z.float(), 1, 2.0)
    assert h.dtype == torch.float32 and grad.dtype == dtype
    assert torch.equal(h, h32) and torch.equal(nbr, nbr32) and torch.equal(grad, grad32.to(dtype))
    dist, _ = OP.knn(z, 3, 2.0)
    assert dist.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Determinism, the one-launch path, CUDA graphs, torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [800, 3000])
def test_deterministic_gradient_is_bit_identical(n):
    z = random_rows(n, 24, seed=n, dtype=torch.float32).cuda()
    first = entropy(z, 1, 2.0, deterministic=True)
    for _ in range(3):
        again = entropy(z, 1, 2.0, deterministic=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_fused_and_gather_paths_sum_in_the_same_order(monkeypatch):
    """Both deterministic paths add the same terms in the same order: bit-identical results,
    given the same searcher (by default the choice depends on the GPU's SM count: pinned here)."""
    monkeypatch.setenv("EAE_KERNELS_CUDA_TILE", "small")
    z = random_rows(600, 40, seed=5, dtype=torch.float32).cuda()
    fused = entropy(z, 3, 2.0)
    monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", "gather")
    gathered = entropy(z, 3, 2.0)
    assert all(torch.equal(a, b) for a, b in zip(fused, gathered))


def test_small_batch_is_one_kernel_launch():
    """N <= 1024, d <= 256: H and dH/dz from one kernel (plus an 8-byte memset of its two counters)."""
    from torch.profiler import ProfilerActivity, profile

    z = random_rows(1024, 64, dtype=torch.float32).cuda()
    entropy(z, 1, 2.0)  # warm-up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        entropy(z, 1, 2.0)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA" and "emset" not in e.name]
    if not kernels:
        pytest.skip("the profiler recorded no CUDA kernels here")
    assert len(kernels) == 1 and "search_kernel" in kernels[0], kernels


@pytest.mark.parametrize("setting", ["fused", "atomic", "gather"])
def test_cuda_graph_capture_and_replay(setting, monkeypatch):
    if setting != "fused":
        monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", setting)
    n = 512 if setting == "fused" else 2000
    z = random_rows(n, 32, seed=1, dtype=torch.float32).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        entropy(z, 1, 2.0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, grad, nbr = entropy(z, 1, 2.0)
    z.copy_(random_rows(n, 32, seed=2, dtype=torch.float32).cuda())
    graph.replay()
    torch.cuda.synchronize()
    h_eager, grad_eager, nbr_eager = entropy(z, 1, 2.0)
    assert torch.equal(nbr, nbr_eager)
    torch.testing.assert_close(h, h_eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, grad_eager, rtol=1e-5, atol=1e-7)


def test_torch_compile_fullgraph():
    z = random_rows(256, 16, dtype=torch.float32).cuda().requires_grad_()

    @torch.compile(fullgraph=True)
    def loss(x):
        return -eae_kernels.kl_entropy(x, 1, backend="cuda")

    out = loss(z)
    (g,) = torch.autograd.grad(out, z)
    h = eae_kernels.kl_entropy(z, 1, backend="cuda")
    (g_eager,) = torch.autograd.grad(-h, z)
    torch.testing.assert_close(out, -h)
    torch.testing.assert_close(g, g_eager)


def test_opcheck():
    z = random_rows(64, 5, dtype=torch.float32).cuda().requires_grad_()
    torch.library.opcheck(OP.kl_entropy.default, (z, 1, 2.0, EPS, True, False, 0, -1))
    torch.library.opcheck(OP.knn.default, (z.detach(), 3, 2.0))


def test_runs_on_a_side_stream():
    z = random_rows(700, 16, dtype=torch.float32).cuda()
    expected = entropy(z, 1, 2.0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = entropy(z, 1, 2.0)
    stream.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
