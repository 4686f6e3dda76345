"""CUDA-specific checks of the CUDA C++ backend (csrc/cuda/): every execution path and searcher
against the CPU op (same semantics, same keys), determinism, CUDA-graph capture, the one-launch
small-batch path, half inputs, alignment, and torch.compile; and the estimator family on batches
of sets (kl_entropy_sets, knn_sets, kl_cross_entropy, kl_divergence, koleo) against the CPU op:
values, both gradients, batched == a loop, ragged == slicing, k in {1, 3, 20}, p in {1, 2, inf},
ties, NaN, empty sets, bit-for-bit repeats.

The generic contract (values against the reference, gradcheck, ties, NaN, ...) runs for the
'cuda' backend in the device-parametrised suite (conftest.fused_backends). Everything here skips
without a GPU or without the compiled CUDA kernels.

The backend's knobs, read on every call (csrc/cuda/kl_cuda.cu):
  EAE_KERNELS_CUDA_PATH = atomic | gather   the gradient path (default: fused for N <= 1024 and
                                            d <= 256, else atomic, or gather if deterministic;
                                            the set ops: fused for sets of <= 1024 rows, else
                                            gather)
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


# ---------------------------------------------------------------------------------------------
# The estimator family on batches of sets (csrc/cuda/sets_cuda.cu): every op against the CPU op
# ---------------------------------------------------------------------------------------------

SETS_PATHS = ("fused", "atomic", "gather")


@pytest.fixture(params=SETS_PATHS)
def sets_path(request, monkeypatch):
    """The gradient path of the set ops (fused: the default for sets of <= 1024 rows)."""
    if request.param != "fused":
        monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", request.param)
    return request.param


def padded_sets(sizes, rows, d, *, seed, dtype=torch.float64):
    """(B, rows, d) random sets, the rows at or past each size filled with garbage (1e3: a padded
    row that were searched would become the nearest neighbour of nothing, but change values), and
    the lengths on the GPU."""
    x = random_rows(len(sizes) * rows, d, seed=seed, dtype=dtype).view(len(sizes), rows, d).clone()
    for b, m in enumerate(sizes):
        x[b, m:] = 1e3
    return x.cuda(), torch.tensor(sizes, dtype=torch.long).cuda()


def cpu_args(args):
    return [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]


def assert_op_matches_cpu(op, args, *, exact_index_outputs=(), rtol=1e-5):
    """The CUDA op against the CPU op on the same arguments: integer outputs exactly, the others
    to rounding (relative to the output's largest magnitude for gradients)."""
    got = op(*args)
    want = op(*cpu_args(args))
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, (i, g.dtype, w.dtype, g.shape, w.shape)
        if i in exact_index_outputs:
            assert torch.equal(g.cpu(), w), f"output {i} (indices) differs from the CPU op"
        elif g.numel():
            scale = max(1.0, w.abs().nan_to_num(0, 0, 0).max().item())
            torch.testing.assert_close(g.cpu(), w, rtol=rtol, atol=rtol * scale, equal_nan=True)
    return got


def tol(dtype):
    return 1e-10 if dtype == torch.float64 else 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3, 20])
def test_entropy_sets_matches_cpu(sets_path, k, p, dtype):
    m1 = 17 + k // 2
    x, lengths = padded_sets([40, m1, k + 5], 40, 6, seed=k, dtype=dtype)
    for lens in (None, lengths):
        h, grad, nbr = assert_op_matches_cpu(OP.kl_entropy_sets, (x, lens, k, p, EPS, True),
                                             exact_index_outputs=(2,), rtol=tol(dtype))
        if lens is not None:
            assert bool((nbr[1, m1:] == -1).all()) and torch.count_nonzero(grad[1, m1:]) == 0
    assert_op_matches_cpu(OP.kl_entropy_sets, (x, lengths, k, p, EPS, False), exact_index_outputs=(2,), rtol=tol(dtype))


@pytest.mark.parametrize("op_name", ["kl_cross_entropy", "kl_divergence"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3, 20])
def test_cross_ops_match_cpu_for_both_gradients(sets_path, op_name, k, p, dtype):
    op = getattr(OP, op_name)
    x, lx = padded_sets([30, k + 2, 25], 30, 5, seed=k, dtype=dtype)
    y, ly = padded_sets([k, 50, 2 * k + 3], 50, 5, seed=k + 100, dtype=dtype)
    for lens in ((None, None), (lx, ly)):
        v, gx, gy = assert_op_matches_cpu(op, (x, y, *lens, k, p, EPS, True), rtol=tol(dtype))
        assert gx.shape == x.shape and gy.shape == y.shape
        if lens[0] is not None:
            assert torch.count_nonzero(gx[1, k + 2:]) == 0 and torch.count_nonzero(gy[0, k:]) == 0
    v, gx, gy = assert_op_matches_cpu(op, (x, y, lx, ly, k, p, EPS, False), rtol=tol(dtype))
    assert gx.numel() == 0 and gy.numel() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_koleo_matches_cpu_with_lengths_and_row_ranges(sets_path, dtype):
    x, lengths = padded_sets([64, 9, 33], 64, 16, seed=3, dtype=dtype)
    x = torch.nn.functional.normalize(x, dim=-1)
    for lens in (None, lengths):
        assert_op_matches_cpu(OP.koleo, (x, lens, 1e-8, True, 0, -1), rtol=tol(dtype))
    one = x[:1].contiguous()
    parts = [assert_op_matches_cpu(OP.koleo, (one, None, 1e-8, True, b, e), rtol=tol(dtype))
             for b, e in [(0, 20), (20, 21), (21, 64)]]
    full = OP.koleo(one, None, 1e-8, True, 0, -1)
    torch.testing.assert_close(sum(p[0] for p in parts), full[0], rtol=tol(dtype), atol=tol(dtype))
    torch.testing.assert_close(sum(p[1] for p in parts), full[1], rtol=tol(dtype), atol=tol(dtype))


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3, 20])
def test_knn_sets_matches_cpu(k, p):
    x, lx = padded_sets([30, 0, k + 1], 30, 4, seed=k, dtype=torch.float32)  # an empty query set
    y, ly = padded_sets([k, 41, 2 * k], 41, 4, seed=k + 1, dtype=torch.float32)
    for lens in ((None, None), (lx, None)):
        dist, idx = assert_op_matches_cpu(OP.knn_sets, (x, None, *lens, k, p), exact_index_outputs=(1,), rtol=1e-6)
    assert bool((idx[1] == -1).all()) and bool((dist[1] == 0).all())
    for lens in ((None, None), (lx, ly)):
        assert_op_matches_cpu(OP.knn_sets, (x, y, *lens, k, p), exact_index_outputs=(1,), rtol=1e-6)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", [1, 3])
def test_set_ops_exact_ties_take_the_lower_index_like_cpu(sets_path, k, p):
    x = integer_rows(3 * 60, 2, seed=k).view(3, 60, 2).to(torch.float32).cuda()  # ties, duplicates
    y = integer_rows(3 * 50, 2, seed=k + 7).view(3, 50, 2).to(torch.float32).cuda()
    assert_op_matches_cpu(OP.kl_entropy_sets, (x, None, k, p, EPS, True), exact_index_outputs=(2,))
    assert_op_matches_cpu(OP.knn_sets, (x, None, None, None, k, p), exact_index_outputs=(1,))
    assert_op_matches_cpu(OP.knn_sets, (x, y, None, None, k, p), exact_index_outputs=(1,))
    assert_op_matches_cpu(OP.kl_divergence, (x, y, None, None, k, p, EPS, True))


@pytest.mark.parametrize("p", P_VALUES)
def test_set_ops_non_finite_rows_like_cpu(sets_path, p):
    x, _ = padded_sets([40, 40], 40, 3, seed=5, dtype=torch.float32)
    y, _ = padded_sets([35, 35], 35, 3, seed=6, dtype=torch.float32)
    x[0, 7, 1] = math.nan
    y[1, 3, 0] = math.inf
    h = assert_op_matches_cpu(OP.kl_entropy_sets, (x, None, 2, p, EPS, True), exact_index_outputs=(2,))[0]
    assert math.isnan(h[0].item()) and math.isfinite(h[1].item())
    assert_op_matches_cpu(OP.kl_cross_entropy, (x, y, None, None, 2, p, EPS, True))
    dist, idx = assert_op_matches_cpu(OP.knn_sets, (x, y, None, None, 2, p), exact_index_outputs=(1,))
    assert bool(dist[0, 7].isnan().all())


@pytest.mark.parametrize("op_name", ["kl_entropy_sets", "kl_divergence", "koleo", "knn_sets"])
def test_batched_equals_a_loop_and_ragged_equals_slicing_bit_for_bit(op_name, sets_path):
    """Every set is computed alone (the same sums in the same order), whatever the batch."""
    sizes = [50, 12, 31]
    x, lx = padded_sets(sizes, 50, 7, seed=11, dtype=torch.float32)
    y, ly = padded_sets([20, 44, 9], 44, 7, seed=12, dtype=torch.float32)
    if op_name == "koleo":
        x = torch.nn.functional.normalize(x, dim=-1)
    op = getattr(OP, op_name)

    def call(xs, ys, lxs, lys):
        if op_name == "kl_entropy_sets":
            return op(xs, lxs, 3, 2.0, EPS, True)
        if op_name == "koleo":
            return op(xs, lxs, 1e-8, True, 0, -1)
        if op_name == "knn_sets":
            return op(xs, ys, lxs, lys, 3, 2.0)
        return op(xs, ys, lxs, lys, 3, 2.0, EPS, True)

    batched = call(x, y, lx, ly)
    # atomics add in another order: the gradients are then equal only to rounding
    same = torch.equal if sets_path != "atomic" else (lambda a, c: torch.allclose(a, c, rtol=1e-5, atol=1e-6))
    for b, m in enumerate(sizes):
        n = int(ly[b])
        alone = call(x[b : b + 1, :m].contiguous(), y[b : b + 1, :n].contiguous(), None, None)
        for i, (out, single) in enumerate(zip(batched, alone)):
            if op_name != "knn_sets" and i == 0:  # values (B,): identical on every path
                assert torch.equal(out[b : b + 1], single)
                continue
            rows = n if (op_name == "kl_divergence" and i == 2) else m  # dD/dy has y's rows
            is_gradient = op_name != "knn_sets" and not (op_name == "kl_entropy_sets" and i == 2)
            assert (same if is_gradient else torch.equal)(out[b, :rows], single[0]), (op_name, i, b)
            if is_gradient:
                assert torch.count_nonzero(out[b, rows:]) == 0
    if sets_path != "atomic":
        assert all(torch.equal(a, c) for a, c in zip(batched, call(x, y, lx, ly)))


@pytest.mark.parametrize("path_name", ["fused", "gather"])
def test_set_ops_deterministic_repeat_bit_for_bit(path_name, monkeypatch):
    if path_name == "gather":
        monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", "gather")
    x, lx = padded_sets([300, 120], 300, 12, seed=2, dtype=torch.float32)
    y, ly = padded_sets([200, 250], 250, 12, seed=3, dtype=torch.float32)
    first = OP.kl_divergence(x, y, lx, ly, 2, 2.0, EPS, True)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, OP.kl_divergence(x, y, lx, ly, 2, 2.0, EPS, True)))
    monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", "gather" if path_name == "fused" else "fused")
    assert all(torch.equal(a, b) for a, b in zip(first, OP.kl_divergence(x, y, lx, ly, 2, 2.0, EPS, True)))


@pytest.mark.parametrize("op_name", ["kl_entropy_sets", "kl_cross_entropy"])
def test_large_sets_take_two_launches_and_match_cpu(op_name, sets_path):
    if sets_path == "fused":
        pytest.skip("sets above 1024 rows never take the fused path")
    x, lx = padded_sets([1500, 1100], 1500, 20, seed=4, dtype=torch.float32)
    if op_name == "kl_entropy_sets":
        assert_op_matches_cpu(OP.kl_entropy_sets, (x, lx, 2, 2.0, EPS, True), exact_index_outputs=(2,))
    else:
        y, ly = padded_sets([1300, 900], 1300, 20, seed=5, dtype=torch.float32)
        assert_op_matches_cpu(OP.kl_cross_entropy, (x, y, lx, ly, 2, 2.0, EPS, True))


def test_set_ops_errors_like_cpu():
    x, _ = padded_sets([10, 10], 10, 3, seed=1, dtype=torch.float32)
    for lens in ([10, 1], [10, 11]):
        lengths = torch.tensor(lens).cuda()
        with pytest.raises(RuntimeError, match="set 1|lengths"):
            OP.kl_entropy_sets(x, lengths, 1, 2.0, EPS, True)
    with pytest.raises(RuntimeError, match="same number of columns"):
        OP.kl_cross_entropy(x, x[..., :2].contiguous(), None, None, 1, 2.0, EPS, True)


def test_set_ops_gradients_through_the_public_api_gradcheck():
    x = random_rows(2 * 12, 3, seed=1).view(2, 12, 3).cuda().requires_grad_()
    y = random_rows(2 * 10, 3, seed=2).view(2, 10, 3).cuda().requires_grad_()
    lx = torch.tensor([12, 8]).cuda()
    ly = torch.tensor([10, 6]).cuda()
    torch.autograd.gradcheck(lambda a, b: eae_kernels.kl_divergence(a, b, 2, lengths_x=lx, lengths_y=ly, backend="cuda"),
                             (x, y))
    torch.autograd.gradcheck(lambda a: eae_kernels.kl_entropy(a, 2, lengths=lx, backend="cuda"), (x,))
    torch.autograd.gradcheck(lambda a: eae_kernels.koleo_loss(a[0], backend="cuda"), (x,))


def test_set_ops_against_the_reference():
    x = random_rows(3 * 40, 5, seed=9).view(3, 40, 5).cuda()
    y = random_rows(3 * 30, 5, seed=10).view(3, 30, 5).cuda()
    for name in ("kl_cross_entropy", "kl_divergence"):
        got = getattr(eae_kernels, name)(x, y, 3, backend="cuda")
        want = getattr(eae_kernels, name)(x, y, 3, backend="reference")
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eae_kernels.kl_entropy(x, 3, backend="cuda"),
                               eae_kernels.kl_entropy(x, 3, backend="reference"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eae_kernels.koleo_loss(x[0], backend="cuda"),
                               eae_kernels.koleo_loss(x[0], backend="reference"), rtol=1e-12, atol=1e-12)


def test_small_batch_of_sets_is_one_kernel_launch():
    """B sets of <= 1024 rows: values and both gradients from one kernel (plus a counter memset)."""
    from torch.profiler import ProfilerActivity, profile

    x, lx = padded_sets([1024] * 4, 1024, 16, seed=1, dtype=torch.float32)
    y, ly = padded_sets([512] * 4, 512, 16, seed=2, dtype=torch.float32)
    OP.kl_divergence(x, y, lx, ly, 1, 2.0, EPS, True)  # warm-up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        OP.kl_divergence(x, y, lx, ly, 1, 2.0, EPS, True)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA" and "emset" not in e.name
               and "sets_kernel" in e.name]
    if not kernels:
        pytest.skip("the profiler recorded no CUDA kernels here")
    assert len(kernels) == 1, kernels


@pytest.mark.parametrize("path_name", ["fused", "gather"])
def test_set_ops_cuda_graph_capture_and_replay(path_name, monkeypatch):
    """Without lengths nothing is copied between host and device: the set ops can be captured."""
    if path_name == "gather":
        monkeypatch.setenv("EAE_KERNELS_CUDA_PATH", "gather")
    x, _ = padded_sets([200] * 4, 200, 8, seed=1, dtype=torch.float32)
    y, _ = padded_sets([150] * 4, 150, 8, seed=2, dtype=torch.float32)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        OP.kl_divergence(x, y, None, None, 1, 2.0, EPS, True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = OP.kl_divergence(x, y, None, None, 1, 2.0, EPS, True)
    x.copy_(padded_sets([200] * 4, 200, 8, seed=3, dtype=torch.float32)[0])
    graph.replay()
    torch.cuda.synchronize()
    eager = OP.kl_divergence(x, y, None, None, 1, 2.0, EPS, True)
    assert all(torch.equal(a, b) for a, b in zip(captured, eager))
