"""The estimator family on batches of sets: kl_entropy (batched, ragged), knn_distances (cross-set,
batched, ragged), kl_cross_entropy, kl_divergence, on the CPU and reference backends, against
eae_kernels.reference at float64 and against an independent scipy cKDTree implementation."""

from __future__ import annotations

import math

import pytest
import torch

import eae_kernels
from eae_kernels import kl_cross_entropy, kl_divergence, kl_entropy, knn_distances, reference

from conftest import P_VALUES, integer_rows, random_rows

BACKENDS = ("cpu", "reference")
P_IDS = ["p1", "p2", "pinf"]
TIGHT = dict(rtol=1e-10, atol=1e-10)

REF_PAIR = {"kl_cross_entropy": reference.kl_cross_entropy, "kl_divergence": reference.kl_divergence}
PAIR = {"kl_cross_entropy": kl_cross_entropy, "kl_divergence": kl_divergence}


def batch(b: int, n: int, d: int, seed: int) -> torch.Tensor:
    return random_rows(b * n, d, seed=seed).view(b, n, d)


# ---------------------------------------------------------------------------------------------
# Values and gradients against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(PAIR))
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_pair_ops_match_reference(backend, op, p, k):
    x = random_rows(40, 3, seed=1).requires_grad_(True)
    y = (random_rows(30, 3, seed=2) * 1.3 + 0.2).requires_grad_(True)
    h = PAIR[op](x, y, k, p=p, backend=backend)
    h_ref = REF_PAIR[op](x, y, k, p, exact=True)
    assert h.shape == () and h.dtype == torch.float64
    torch.testing.assert_close(h, h_ref, **TIGHT)
    g = torch.autograd.grad(h, (x, y))
    g_ref = torch.autograd.grad(h_ref, (x, y))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("op", list(PAIR))
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
def test_pair_ops_gradcheck_both_inputs(op, p):
    x = random_rows(12, 3, seed=3).requires_grad_(True)
    y = random_rows(9, 3, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: PAIR[op](a, b, 2, p=p, backend="cpu"), (x, y))


@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
def test_batched_entropy_gradcheck_and_double_backward(p):
    z = batch(3, 10, 2, seed=5).requires_grad_(True)
    lengths = torch.tensor([10, 6, 8])
    fn = lambda t: kl_entropy(t, 2, p=p, lengths=lengths, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,))
    if p == 2.0:
        assert torch.autograd.gradgradcheck(fn, (z,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
def test_knn_cross_matches_reference(backend, p):
    x = random_rows(25, 4, seed=6).requires_grad_(True)
    y = random_rows(31, 4, seed=7).requires_grad_(True)
    dist, idx = knn_distances(x, y, 3, p=p, backend=backend)
    dist_ref, idx_ref = reference.knn_distances(x, 3, p, y=y, exact=True)
    assert dist.shape == (25, 3) and torch.equal(idx, idx_ref)
    torch.testing.assert_close(dist, dist_ref, **TIGHT)
    w = torch.rand(25, 3, dtype=torch.float64)
    g = torch.autograd.grad((dist * w).sum(), (x, y))
    g_ref = torch.autograd.grad((dist_ref * w).sum(), (x, y))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **TIGHT)


def test_knn_cross_gradcheck():
    x = random_rows(8, 3, seed=8).requires_grad_(True)
    y = random_rows(7, 3, seed=9).requires_grad_(True)
    lengths_x, lengths_y = torch.tensor([8]), torch.tensor([5])
    fn = lambda a, b: knn_distances(a, b, 2, lengths_x=lengths_x, lengths_y=lengths_y)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x[None], y[None]))


# ---------------------------------------------------------------------------------------------
# Batched == a loop over the sets; ragged == slicing
# ---------------------------------------------------------------------------------------------


def _ragged_cases():
    return [None, torch.tensor([12, 4, 9, 12])]


@pytest.mark.parametrize("lengths", _ragged_cases(), ids=["full", "ragged"])
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_batched_entropy_equals_loop(lengths, p, k):
    z = batch(4, 12, 3, seed=10).requires_grad_(True)
    h = kl_entropy(z, k, p=p, lengths=lengths)
    assert h.shape == (4,)
    (g,) = torch.autograd.grad(h.sum(), z)
    sizes = lengths.tolist() if lengths is not None else [12] * 4
    for b, n in enumerate(sizes):
        zb = z[b, :n].detach().clone().requires_grad_(True)
        hb = kl_entropy(zb, k, p=p)
        (gb,) = torch.autograd.grad(hb, zb)
        torch.testing.assert_close(h[b], hb, **TIGHT)
        torch.testing.assert_close(g[b, :n], gb, **TIGHT)
        assert torch.all(g[b, n:] == 0), "padded rows get a zero gradient"


@pytest.mark.parametrize("op", list(PAIR))
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_batched_pair_ops_equal_loop_with_ragged_sets(op, p, k):
    x = batch(3, 10, 2, seed=11).requires_grad_(True)
    y = batch(3, 14, 2, seed=12).requires_grad_(True)
    lx, ly = torch.tensor([10, 5, 7]), torch.tensor([14, 3, 9])
    h = PAIR[op](x, y, k, p=p, lengths_x=lx, lengths_y=ly)
    assert h.shape == (3,)
    gx, gy = torch.autograd.grad(h.sum(), (x, y))
    for b, (m, n) in enumerate(zip(lx.tolist(), ly.tolist())):
        xb = x[b, :m].detach().clone().requires_grad_(True)
        yb = y[b, :n].detach().clone().requires_grad_(True)
        hb = PAIR[op](xb, yb, k, p=p)
        gxb, gyb = torch.autograd.grad(hb, (xb, yb))
        torch.testing.assert_close(h[b], hb, **TIGHT)
        torch.testing.assert_close(gx[b, :m], gxb, **TIGHT)
        torch.testing.assert_close(gy[b, :n], gyb, **TIGHT)
        assert torch.all(gx[b, m:] == 0) and torch.all(gy[b, n:] == 0)
        torch.testing.assert_close(hb, REF_PAIR[op](xb, yb, k, p, exact=True), **TIGHT)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
def test_batched_knn_equals_loop_with_empty_sets(cross, p):
    x = batch(4, 9, 3, seed=13)
    y = batch(4, 11, 3, seed=14) if cross else None
    lx = torch.tensor([9, 0, 5, 4])  # set 1 is empty: all padding
    ly = torch.tensor([11, 3, 3, 6]) if cross else None
    dist, idx = knn_distances(x, y, 3, p=p, lengths_x=lx, lengths_y=ly)
    assert dist.shape == idx.shape == (4, 9, 3)
    for b, m in enumerate(lx.tolist()):
        if cross:
            db, ib = knn_distances(x[b, :m], y[b, : ly[b]], 3, p=p) if m else (None, None)
        else:
            db, ib = knn_distances(x[b, :m], 3, p=p) if m else (None, None)
        if m:
            torch.testing.assert_close(dist[b, :m], db, **TIGHT)
            assert torch.equal(idx[b, :m], ib)
        assert torch.all(dist[b, m:] == 0) and torch.all(idx[b, m:] == -1)
    dist_ref, idx_ref = reference.knn_distances(x, 3, p, y=y, lengths_x=lx, lengths_y=ly, exact=True)
    torch.testing.assert_close(dist, dist_ref, **TIGHT)
    assert torch.equal(idx, idx_ref)


# ---------------------------------------------------------------------------------------------
# Duplicates, ties, NaN, half inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(PAIR))
@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
def test_ties_and_duplicates_match_reference(op, p):
    x = integer_rows(30, 2, seed=15).requires_grad_(True)  # many exact ties and duplicate rows
    y = integer_rows(20, 2, seed=16).requires_grad_(True)
    h = PAIR[op](x, y, 2, p=p)
    h_ref = REF_PAIR[op](x, y, 2, p, exact=True)
    assert math.isfinite(h.item())
    torch.testing.assert_close(h, h_ref, **TIGHT)
    if p != math.inf:  # p=inf: equal coordinates make the subgradient ambiguous (we take the lowest)
        for a, b in zip(torch.autograd.grad(h, (x, y)), torch.autograd.grad(h_ref, (x, y))):
            torch.testing.assert_close(a, b, **TIGHT)
    _, idx = knn_distances(x, y, 4, p=p)
    _, idx_ref = reference.knn_distances(x, 4, p, y=y, exact=True)
    assert torch.equal(idx, idx_ref), "ties go to the lower index"


@pytest.mark.parametrize("op", list(PAIR))
def test_nan_poisons_only_its_own_set(op):
    x = batch(2, 8, 3, seed=17)
    y = batch(2, 9, 3, seed=18)
    x[0, 2, 1] = math.nan
    h = PAIR[op](x, y, 1)
    assert math.isnan(h[0].item()) and math.isfinite(h[1].item())
    torch.testing.assert_close(h[1], PAIR[op](x[1], y[1], 1), **TIGHT)
    y2 = y.clone()
    y2[1, 0, 0] = math.inf
    dist, idx = knn_distances(x, y2, 2)
    assert ((idx >= 0) & (idx < 9)).all(), "every index is a valid row"
    assert torch.isnan(dist[0, 2]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_half_and_float32_inputs(dtype):
    x = random_rows(30, 3, seed=19, dtype=dtype).requires_grad_(True)
    y = random_rows(25, 3, seed=20, dtype=dtype).requires_grad_(True)
    h = kl_divergence(x, y, 2)
    assert h.dtype == (torch.float32 if dtype != torch.float32 else dtype)
    gx, gy = torch.autograd.grad(h, (x, y))
    assert gx.dtype == gy.dtype == dtype
    h_ref = reference.kl_divergence(x.double(), y.double(), 2, exact=True)
    assert h.item() == pytest.approx(h_ref.item(), rel=1e-5, abs=1e-5)


def test_constant_rule():
    """psi(C + 1) - psi(k) + log V with C = N - 1 (self) and C = N (cross): one definition."""
    from eae_kernels import _constants

    for n, d, k, p in [(10, 3, 1, 2.0), (100, 7, 3, math.inf), (25, 2, 2, 1.0)]:
        assert _constants.kl_constant(n, d, k, p) == _constants.estimate_constant(n - 1, d, k, p)
        ref = (
            torch.special.digamma(torch.tensor(float(n + 1), dtype=torch.float64)).item()
            - torch.special.digamma(torch.tensor(float(k), dtype=torch.float64)).item()
            + reference.log_unit_ball_volume(d, p)
        )
        assert _constants.estimate_constant(n, d, k, p) == pytest.approx(ref, rel=1e-14, abs=1e-14)


# ---------------------------------------------------------------------------------------------
# An independent implementation: scipy's cKDTree (not reference.py; scipy comes with scikit-learn)
# ---------------------------------------------------------------------------------------------

def _log_ball(d: int, p: float) -> float:
    if p == math.inf:
        return d * math.log(2)
    return d * math.log(2 * math.gamma(1 + 1 / p)) - math.lgamma(1 + d / p)


def kdtree_cross_entropy(x, y, k, p):
    """psi(N + 1) - psi(k) + log V + (d / M) sum_i log nu_i (eps = 0), nu_i by a KD-tree."""
    scipy_spatial, scipy_special = pytest.importorskip("scipy.spatial"), pytest.importorskip("scipy.special")
    m, d = x.shape
    nu = scipy_spatial.cKDTree(y).query(x, k=[k], p=p)[0][:, 0]
    return scipy_special.digamma(len(y) + 1) - scipy_special.digamma(k) + _log_ball(d, p) + d * float(
        sum(math.log(v) for v in nu)
    ) / m


def kdtree_divergence(x, y, k, p):
    """cross-entropy - entropy; rho_i: the (k + 1)-th nearest row of x, the row itself first."""
    scipy_spatial, scipy_special = pytest.importorskip("scipy.spatial"), pytest.importorskip("scipy.special")
    m, d = x.shape
    rho = scipy_spatial.cKDTree(x).query(x, k=[k + 1], p=p)[0][:, 0]
    entropy = scipy_special.digamma(m) - scipy_special.digamma(k) + _log_ball(d, p) + d * float(
        sum(math.log(v) for v in rho)
    ) / m
    return kdtree_cross_entropy(x, y, k, p) - entropy


@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
@pytest.mark.parametrize("k", [1, 3])
def test_against_kdtree(p, k):
    x = random_rows(300, 3, seed=21)
    y = random_rows(200, 3, seed=22) * 1.5 + 0.5
    xn, yn = x.numpy(), y.numpy()
    assert kl_cross_entropy(x, y, k, p=p, eps=0.0).item() == pytest.approx(kdtree_cross_entropy(xn, yn, k, p), rel=1e-10)
    assert kl_divergence(x, y, k, p=p, eps=0.0).item() == pytest.approx(kdtree_divergence(xn, yn, k, p), rel=1e-9, abs=1e-10)


def test_divergence_of_two_gaussians_is_close_to_the_closed_form():
    """x ~ N(0, I), y ~ N(mu, s^2 I) in d = 2, N = 20,000 each: within 0.05 of the exact KL."""
    d, n, s = 2, 20_000, 1.5
    mu = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(23)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = mu + s * torch.randn(n, d, generator=g, dtype=torch.float64)
    exact = 0.5 * (d / s**2 + float(mu @ mu) / s**2 - d + 2 * d * math.log(s))
    estimate = kl_divergence(x, y, 5).item()
    assert abs(estimate - exact) < 0.05, (estimate, exact)


# ---------------------------------------------------------------------------------------------
# torch.library
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES, ids=P_IDS)
def test_opcheck_new_ops(p):
    x = batch(2, 12, 3, seed=24).float().requires_grad_(True)
    y = batch(2, 10, 3, seed=25).float().requires_grad_(True)
    lx, ly = torch.tensor([12, 7]), torch.tensor([10, 4])
    ops = torch.ops.eae_kernels
    torch.library.opcheck(ops.kl_entropy_sets.default, (x, lx, 2, p, 1e-8, True))
    torch.library.opcheck(ops.kl_entropy_sets.default, (x.detach(), None, 1, p, 1e-8, False))
    for op in (ops.kl_cross_entropy.default, ops.kl_divergence.default):
        torch.library.opcheck(op, (x, y, lx, ly, 3, p, 1e-8, True))
        torch.library.opcheck(op, (x, y, None, None, 1, p, 1e-8, True))
    torch.library.opcheck(ops.knn_sets.default, (x, y, lx, ly, 3, p))
    torch.library.opcheck(ops.knn_sets.default, (x, None, lx, None, 2, p))
    if p == 2.0:
        torch.library.opcheck(ops.koleo.default, (x, lx, 1e-8, True))
        torch.library.opcheck(ops.koleo.default, (x[:1], None, 1e-8, True, 3, 9))


def test_torch_compile_fullgraph_new_ops():
    torch._dynamo.reset()

    def loss_fn(x, y):
        return kl_divergence(x, y, 2) + kl_entropy(x.view(2, 20, 4)).sum() + eae_kernels.koleo_loss(x)

    compiled = torch.compile(loss_fn, fullgraph=True)
    x = random_rows(40, 4, seed=26, dtype=torch.float32).requires_grad_(True)
    y = random_rows(30, 4, seed=27, dtype=torch.float32).requires_grad_(True)
    out = compiled(x, y)
    g = torch.autograd.grad(out, (x, y))
    out_eager = loss_fn(x, y)
    g_eager = torch.autograd.grad(out_eager, (x, y))
    torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_double_backward_through_pair_ops_raises():
    x = random_rows(10, 2, seed=28).requires_grad_(True)
    y = random_rows(8, 2, seed=29).requires_grad_(True)
    (g,) = torch.autograd.grad(kl_divergence(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


# ---------------------------------------------------------------------------------------------
# Backends: the table
# ---------------------------------------------------------------------------------------------


def test_backend_table():
    from eae_kernels import backends

    assert backends.AUTO_ORDER["cpu"] == ("cpu",)
    assert backends.AUTO_ORDER["cuda"] == ("cuda", "triton")
    assert set(backends.BACKENDS["reference"].ops) == set(backends.ALL_OPS)
    assert backends.resolve("auto", "kl_divergence", torch.zeros(1)) == "cpu"
    assert set(backends.BACKENDS["triton"].ops) == set(backends.ALL_OPS)
    assert set(backends.BACKENDS["cuda"].ops) == set(backends.ALL_OPS)
    with pytest.raises(RuntimeError, match="backend='cuda' is unavailable: it needs a CUDA tensor"):
        eae_kernels.koleo_loss(torch.randn(5, 3), backend="cuda")
