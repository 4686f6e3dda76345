"""kl_entropy of the fused backends against the naive reference: values, gradients, edge cases,
invariances and statistics. The ground truth is always ``reference`` in float64 on the same
(rounded) input values."""

from __future__ import annotations

import math

import pytest
import torch

import eae_kernels
from eae_kernels import kl_entropy, reference

from conftest import HALF_DTYPES, P_VALUES, integer_rows, random_rows

# Tolerances: |H - H_ref| <= h_atol * d + h_rtol * |H_ref|, |g - g_ref| <= g_tol * max|g_ref|.
TOLERANCES = {
    torch.float64: dict(h_atol=1e-11, h_rtol=1e-12, g_tol=1e-9),
    torch.float32: dict(h_atol=2e-6, h_rtol=1e-6, g_tol=2e-4),
    torch.float16: dict(h_atol=2e-6, h_rtol=1e-6, g_tol=2e-3),  # gradient rounded to float16
    torch.bfloat16: dict(h_atol=2e-6, h_rtol=1e-6, g_tol=1e-2),  # gradient rounded to bfloat16
}


def reference_value_and_grad(z64: torch.Tensor, k: int, p: float, eps: float = eae_kernels.DEFAULT_EPS):
    z64 = z64.detach().clone().requires_grad_(True)
    h = reference.kl_entropy(z64, k, p, eps, exact=True)
    (g,) = torch.autograd.grad(h, z64)
    return h.detach(), g


def value_and_grad(z: torch.Tensor, k: int, p: float, backend: str, **kwargs):
    z = z.detach().clone().requires_grad_(True)
    h = kl_entropy(z, k, p=p, backend=backend, **kwargs)
    (g,) = torch.autograd.grad(h, z)
    return h.detach(), g


def rows_without_near_ties(z64: torch.Tensor, k: int, p: float, rel_gap: float) -> torch.Tensor:
    """Rows whose gradient does not depend on breaking a near-tie.

    A row whose k-th distance is within ``rel_gap`` of its (k-1)-th or (k+1)-th may legitimately
    pick another neighbour in lower precision (``rel_gap=0``: exact ties are resolved alike by the
    kernel and the reference, so only near ones count). For p=inf, a row whose largest coordinate
    difference to its neighbour is tied is ambiguous too: the reference (cdist) spreads the
    gradient over the tied coordinates, the kernels give it to the lowest one. Such rows, and the
    rows that are their candidate neighbours (they receive their scatter term), are excluded from
    gradient comparisons.
    """
    n = z64.shape[0]
    dist = torch.cdist(z64, z64, p=p, compute_mode="donot_use_mm_for_euclid_dist")
    dist.fill_diagonal_(math.inf)
    sorted_dist, order = dist.sort(dim=1, stable=True)
    kth = sorted_dist[:, k - 1]
    gap = rel_gap * kth
    ambiguous = torch.zeros(n, dtype=torch.bool)
    if rel_gap > 0:
        if k < n - 1:
            ambiguous |= sorted_dist[:, k] - kth <= gap
        if k >= 2:
            ambiguous |= kth - sorted_dist[:, k - 2] <= gap
    if p == math.inf:
        diff = (z64 - z64[order[:, k - 1]]).abs()
        top = diff.max(dim=1, keepdim=True).values
        ambiguous |= ((diff == top).sum(dim=1) > 1) & (top.squeeze(1) > 0)
    affected = ambiguous.clone()
    candidates = order[:, max(k - 2, 0) : k + 1]
    affected[candidates[ambiguous].flatten()] = True
    return ~affected


def assert_matches_reference(z64, k, p, dtype, device, backend):
    z = z64.to(dtype)
    truth_input = z.to(torch.float64)  # the values the kernel really sees
    h_ref, g_ref = reference_value_and_grad(truth_input, k, p)
    h, g = value_and_grad(z.to(device), k, p, backend)
    tol = TOLERANCES[dtype]
    d = z.shape[1]

    assert h.dtype == (torch.float32 if dtype in HALF_DTYPES else dtype)
    assert g.dtype == dtype and g.shape == z.shape
    h_err = abs(h.double().item() - h_ref.item())
    assert h_err <= tol["h_atol"] * d + tol["h_rtol"] * abs(h_ref.item()), (h.item(), h_ref.item())

    rel_gap = 1e-12 if dtype == torch.float64 else 1e-4
    ok = rows_without_near_ties(truth_input, k, p, rel_gap)
    g_err = (g.cpu().double() - g_ref)[ok].abs().max().item() if ok.any() else 0.0
    assert g_err <= tol["g_tol"] * g_ref.abs().max().item() + 1e-300, (g_err, g_ref.abs().max().item())


@pytest.mark.parametrize("n", [2, 3, 17, 100, pytest.param(1000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("d", [1, 3, 16, 64, 200])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_matches_reference_float64_float32(device_backend, n, d, k, p):
    if n <= k:
        pytest.skip("needs N > k")
    device, backend = device_backend
    z64 = random_rows(n, d, seed=n * 1000 + d * 10 + k)
    for dtype in (torch.float64, torch.float32):
        assert_matches_reference(z64, k, p, dtype, device, backend)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("n,d,k", [(3, 1, 2), (17, 3, 1), (100, 16, 5), (1000, 64, 1), (100, 200, 2)])
@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_half_inputs_accumulate_in_float32(device_backend, dtype, n, d, k, p):
    device, backend = device_backend
    assert_matches_reference(random_rows(n, d, seed=7 + n + d), k, p, dtype, device, backend)


def test_every_cpu_instruction_set_matches_reference():
    ext = eae_kernels._extension._C
    for isa in ("generic", "avx2", "avx512"):
        if not ext.cpu_isa_supported(isa):
            continue
        ext.set_cpu_isa(isa)
        for p in P_VALUES:
            for n, d, k in [(3, 1, 2), (100, 16, 1), (257, 64, 5), (50, 200, 3)]:
                for dtype in (torch.float64, torch.float32):
                    assert_matches_reference(random_rows(n, d, seed=n + d), k, p, dtype, "cpu", "cpu")


# --- gradcheck ------------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
@pytest.mark.parametrize("k", [1, 3])
def test_gradcheck_and_gradgradcheck_float64(device_backend, p, k):
    device, backend = device_backend
    z = random_rows(24, 3, seed=11).to(device).requires_grad_(True)
    fn = lambda x: kl_entropy(x, k, p=p, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,))
    assert torch.autograd.gradgradcheck(fn, (z,))


# --- edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_smallest_batch_n_equals_k_plus_one(device_backend, p):
    device, backend = device_backend
    for k in (1, 2, 5):
        assert_matches_reference(random_rows(k + 1, 4, seed=k), k, p, torch.float64, device, backend)


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
@pytest.mark.parametrize("k", [1, 3])
def test_exact_ties_follow_the_lower_index(device_backend, p, k):
    """Integer rows: many exactly tied distances and duplicates; every distance is exact."""
    device, backend = device_backend
    z64 = integer_rows(60, 3, seed=k, low=-10, high=11)
    h_ref, g_ref = reference_value_and_grad(z64, k, p)
    h, g = value_and_grad(z64.to(device), k, p, backend)
    assert abs(h.item() - h_ref.item()) <= 1e-10 * (1 + abs(h_ref.item()))
    ok = rows_without_near_ties(z64, k, p, rel_gap=0.0)
    assert ok.sum() >= 10
    torch.testing.assert_close(g.cpu()[ok], g_ref[ok], rtol=1e-9, atol=1e-9)


def test_duplicate_rows_give_finite_value_and_gradient(device_backend):
    device, backend = device_backend
    base = random_rows(10, 5, seed=3)
    z = torch.cat([base, base, base[:3]]).to(device)
    for p in P_VALUES:
        for dtype in (torch.float64, torch.float32, torch.float16):
            h, g = value_and_grad(z.to(dtype), 2, p, backend)
            assert torch.isfinite(h) and torch.isfinite(g).all()
    # All rows identical: H = const + d * log(eps) exactly, zero gradient.
    same = torch.ones(8, 3, dtype=torch.float64, device=device)
    h, g = value_and_grad(same, 1, 2.0, backend)
    expected = reference.kl_constant(8, 3, 1, 2.0) + 3 * math.log(eae_kernels.DEFAULT_EPS)
    assert h.item() == pytest.approx(expected, rel=1e-12)
    assert (g == 0).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rows_give_nan(device_backend, bad):
    device, backend = device_backend
    z = random_rows(40, 6, seed=5).to(torch.float32)
    z[7, 2] = bad
    h, g = value_and_grad(z.to(device), 3, 2.0, backend)
    assert torch.isnan(h)
    dist, idx = eae_kernels.knn_distances(z.to(device), 3, backend=backend)
    assert ((idx >= 0) & (idx < 40)).all()
    assert torch.isnan(dist[7]).all()


def test_strided_inputs_equal_their_contiguous_copy(device_backend):
    device, backend = device_backend
    base = random_rows(64, 40, seed=9).to(torch.float32).to(device)
    views = {
        "transposed": base.t().contiguous().t(),
        "column slice": base[:, ::2],
        "row slice": base[::3],
        "expanded": base[:1].expand(12, 40),  # stride 0: all rows equal
        "expanded columns": base[:, :1].expand(64, 7),
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        h_view, g_view = value_and_grad(view, 2, 2.0, backend)
        h_copy, g_copy = value_and_grad(view.contiguous(), 2, 2.0, backend)
        assert torch.equal(h_view, h_copy), name
        assert torch.equal(g_view, g_copy), name


def test_large_d(device_backend):
    device, backend = device_backend
    assert_matches_reference(random_rows(40, 1500, seed=1), 1, 2.0, torch.float32, device, backend)


def test_no_grad_and_detached_inputs_skip_the_gradient(device_backend):
    device, backend = device_backend
    z = random_rows(30, 4).to(device)
    h1 = kl_entropy(z, backend=backend)
    with torch.no_grad():
        h2 = kl_entropy(z.requires_grad_(True), backend=backend)
    assert h1.item() == h2.item() and not h1.requires_grad and not h2.requires_grad


def test_module_wrapper_matches_function():
    z = random_rows(50, 8).requires_grad_(True)
    module = eae_kernels.KLEntropy(k=2, p=1)
    assert module(z).item() == kl_entropy(z, 2, p=1).item()
    assert "k=2" in repr(module)


# --- invariances ----------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_row_permutation(device_backend, p):
    device, backend = device_backend
    z = random_rows(200, 6, seed=2).to(device)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0)).to(device)
    h, g = value_and_grad(z, 2, p, backend)
    h_perm, g_perm = value_and_grad(z[perm], 2, p, backend)
    assert h_perm.item() == pytest.approx(h.item(), rel=1e-13)
    torch.testing.assert_close(g_perm, g[perm], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_translation_and_scaling(device_backend, p):
    device, backend = device_backend
    n, d = 300, 5
    z = random_rows(n, d, seed=4).to(device)
    h = kl_entropy(z, 1, p=p, backend=backend).item()
    shift = torch.linspace(-3, 3, d, dtype=torch.float64, device=device)
    assert kl_entropy(z + shift, 1, p=p, backend=backend).item() == pytest.approx(h, rel=1e-12)
    for a in (3.0, -0.5, 1e-3):
        h_scaled = kl_entropy(a * z, 1, p=p, backend=backend).item()
        assert h_scaled == pytest.approx(h + d * math.log(abs(a)), rel=1e-9, abs=1e-9)


# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 8])
@pytest.mark.parametrize("s", [0.5, 2.0])
def test_estimates_gaussian_entropy(device_backend, d, s):
    """20,000 draws of N(0, s^2 I_d): within 0.05 d nats of d/2 log(2 pi e s^2)."""
    device, backend = device_backend
    z = s * random_rows(20_000, d, seed=d, dtype=torch.float32).to(device)
    truth = 0.5 * d * math.log(2 * math.pi * math.e * s * s)
    for k in (1, 5):
        h = kl_entropy(z, k, backend=backend).item()
        assert abs(h - truth) < 0.05 * d, (k, h, truth)


# --- constants ------------------------------------------------------------------------------


def test_constant_matches_the_closed_forms():
    # log V for p=2 is d/2 log(pi) - lgamma(d/2 + 1); for p=inf d log 2; psi(1) = -gamma.
    for d in (1, 2, 3, 16, 200):
        v2 = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1)
        assert reference.log_unit_ball_volume(d, 2) == pytest.approx(v2, rel=1e-14, abs=1e-14)
        assert reference.log_unit_ball_volume(d, math.inf) == pytest.approx(d * math.log(2))
        assert reference.log_unit_ball_volume(d, 1) == pytest.approx(d * math.log(2) - math.lgamma(d + 1))
    euler_gamma = 0.5772156649015329
    # k=1, p=2: the paper's estimator d mean log r + log(N-1) + log B_d + gamma differs by
    # psi(N) - log(N-1), a constant.
    n, d = 100, 4
    z = random_rows(n, d, seed=0)
    paper = (
        d * torch.log(torch.cdist(z, z).fill_diagonal_(math.inf).min(1).values).mean().item()
        + math.log(n - 1)
        + reference.log_unit_ball_volume(d, 2)
        + euler_gamma
    )
    ours = kl_entropy(z).item()
    psi_n = sum(1.0 / j for j in range(1, n)) - euler_gamma
    assert ours - paper == pytest.approx(psi_n - math.log(n - 1), abs=1e-9)
