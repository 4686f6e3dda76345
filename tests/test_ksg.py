"""KSG mutual information (eae_kernels.ksg_mutual_information) and the Gaussian closed form.

The independent implementation below uses scipy's cKDTree and the paper's formulas directly; it
shares no code with the kernels, eae_kernels.ksg or eae_kernels.reference. A second one, a
NumPy brute force with the documented tie rule (stable sort: the lower index is the nearer), checks
the data with exact ties, where cKDTree's order of tied neighbours is unspecified.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import eae_kernels
from eae_kernels import gaussian_mutual_information, ksg_mutual_information

scipy_spatial = pytest.importorskip("scipy.spatial")
scipy_special = pytest.importorskip("scipy.special")

ISAS = ("generic", "avx2", "avx512")

# Statistical checks of several seconds each (KD-tree references at N = 10,000 in 8 dimensions):
# deselected by the quick run, -m "not slow".
slow = [pytest.mark.slow]


# ---------------------------------------------------------------------------------------------
# Independent implementations of the paper's estimator
# ---------------------------------------------------------------------------------------------


def ksg_kdtree(x: np.ndarray, y: np.ndarray, k: int, variant: int) -> float:
    """Kraskov, Stögbauer & Grassberger 2004, algorithm 1 (eq. 8) or 2 (eq. 11), max-norm, with
    scipy's KD-tree (float64 arithmetic). query_ball_point counts distances <= r, so the strict
    count of algorithm 1 uses the largest float below eps_i."""
    psi = scipy_special.digamma
    n = len(x)
    xy = np.hstack([x, y])
    dist, idx = scipy_spatial.cKDTree(xy).query(xy, k=k + 1, p=np.inf)  # column 0: the row itself
    tree_x, tree_y = scipy_spatial.cKDTree(x), scipy_spatial.cKDTree(y)
    if variant == 1:
        r = np.nextafter(dist[:, k], 0)
        nx = tree_x.query_ball_point(x, r, p=np.inf, return_length=True) - 1
        ny = tree_y.query_ball_point(y, r, p=np.inf, return_length=True) - 1
        return psi(k) + psi(n) - np.mean(psi(nx + 1) + psi(ny + 1))
    nbr = idx[:, 1:]
    rx = np.abs(x[nbr] - x[:, None, :]).max(axis=(1, 2))
    ry = np.abs(y[nbr] - y[:, None, :]).max(axis=(1, 2))
    nx = tree_x.query_ball_point(x, rx, p=np.inf, return_length=True) - 1
    ny = tree_y.query_ball_point(y, ry, p=np.inf, return_length=True) - 1
    return psi(k) - 1.0 / k + psi(n) - np.mean(psi(nx) + psi(ny))


def ksg_bruteforce(x: np.ndarray, y: np.ndarray, k: int, variant: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The same formulas by full distance matrices; ties at the k-th joint distance go to the lower
    index. Returns (I, n_x, n_y)."""
    psi = scipy_special.digamma
    n = len(x)
    dxm = np.abs(x[:, None, :] - x[None, :, :]).max(axis=2)
    dym = np.abs(y[:, None, :] - y[None, :, :]).max(axis=2)
    joint = np.maximum(dxm, dym)
    np.fill_diagonal(joint, np.inf)
    order = np.argsort(joint, axis=1, kind="stable")[:, :k]
    others = ~np.eye(n, dtype=bool)
    if variant == 1:
        eps = np.take_along_axis(joint, order[:, k - 1 : k], axis=1)
        nx = ((dxm < eps) & others).sum(1)
        ny = ((dym < eps) & others).sum(1)
        return psi(k) + psi(n) - np.mean(psi(nx + 1) + psi(ny + 1)), nx, ny
    rx = np.take_along_axis(dxm, order, axis=1).max(1, keepdims=True)
    ry = np.take_along_axis(dym, order, axis=1).max(1, keepdims=True)
    nx = ((dxm <= rx) & others).sum(1)
    ny = ((dym <= ry) & others).sum(1)
    return psi(k) - 1.0 / k + psi(n) - np.mean(psi(nx) + psi(ny)), nx, ny


def correlated_gaussians(n: int, d: int, rho: float, seed: int, dtype=torch.float64):
    """d independent pairs (x_c, y_c) with correlation rho: I = -d/2 log(1 - rho^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1.0 - rho * rho) * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def pair_covariance(d: int, rho: float) -> torch.Tensor:
    cov = torch.eye(2 * d, dtype=torch.float64)
    cov[:d, d:] = rho * torch.eye(d, dtype=torch.float64)
    cov[d:, :d] = rho * torch.eye(d, dtype=torch.float64)
    return cov


def random_pair(n, dx, dy, seed, dtype=torch.float64):
    """Dependent, non-Gaussian pairs: y's first column depends on x's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64)
    y = torch.rand(n, dy, generator=g, dtype=torch.float64)
    y[:, 0] += torch.tanh(2 * x[:, 0])
    return x.to(dtype), y.to(dtype)


@pytest.fixture
def cpu_isa():
    """Forces a CPU instruction set for one test, then restores the previous one."""
    ext = eae_kernels._extension._C
    before = ext.cpu_isa()

    def force(name):
        if not ext.cpu_isa_supported(name):
            pytest.skip(f"this CPU lacks {name}")
        ext.set_cpu_isa(name)

    yield force
    ext.set_cpu_isa(before)


# ---------------------------------------------------------------------------------------------
# Agreement with the independent implementations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", (1, 2))
@pytest.mark.parametrize("k", (1, 3, 5))
@pytest.mark.parametrize("dx", (1, 3, 16))
@pytest.mark.parametrize("dy", (1, 3, 16))
def test_matches_kdtree_float64(variant, k, dx, dy):
    x, y = random_pair(257, dx, dy, seed=dx * 100 + dy * 10 + k)
    ours = ksg_mutual_information(x, y, k, variant=variant)
    expected = ksg_kdtree(x.numpy(), y.numpy(), k, variant)
    assert ours.dtype == torch.float64 and ours.shape == ()
    assert abs(ours.item() - expected) < 1e-9


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("variant", (1, 2))
def test_every_instruction_set_matches_kdtree(cpu_isa, isa, variant):
    cpu_isa(isa)
    for n, dx, dy, dtype in ((70, 2, 5, torch.float64), (129, 16, 1, torch.float64), (70, 3, 3, torch.float32)):
        x, y = random_pair(n, dx, dy, seed=n)
        expected = ksg_kdtree(x.numpy(), y.numpy(), 3, variant)
        if dtype == torch.float32:  # float32 arithmetic: compare with the dense torch version on the same numbers
            x, y = x.float(), y.float()
            expected = ksg_mutual_information(x, y, 3, variant=variant, backend="reference").item()
        ours = ksg_mutual_information(x, y, 3, variant=variant).item()
        assert abs(ours - expected) < (1e-9 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("variant", (1, 2))
@pytest.mark.parametrize("k", (1, 2, 4))
def test_ties_follow_the_papers_inequalities(variant, k):
    """Small integers: many exact ties at eps_i, duplicate rows (eps_i = 0), tied k-th joint
    neighbours. Counts are strict (variant 1) or not (variant 2), ties broken by the lower index."""
    g = torch.Generator().manual_seed(k)
    x = torch.randint(-2, 3, (60, 2), generator=g).double()
    y = torch.randint(-1, 2, (60, 1), generator=g).double()
    expected, _, _ = ksg_bruteforce(x.numpy(), y.numpy(), k, variant)
    for backend in ("cpu", "reference"):
        assert abs(ksg_mutual_information(x, y, k, variant=variant, backend=backend).item() - expected) < 1e-9


def test_hand_computed_values():
    """x = y = 0, 1, ..., 4 and k = 1. Variant 1: eps_i = 1 and no other row is strictly
    within 1, so I = psi(1) + psi(5) - 2 psi(1) = 1 + 1/2 + 1/3 + 1/4. Variant 2: eps_x = eps_y
    = 1, n_x = n_y = 1 at the ends and 2 inside, so I = psi(1) - 1 + psi(5) - (2 psi(1) + 6/5)
    = 25/12 - 1 - 6/5."""
    x = torch.arange(5, dtype=torch.float64)[:, None]
    assert ksg_mutual_information(x, x, 1, variant=1).item() == pytest.approx(25 / 12, abs=1e-12)
    assert ksg_mutual_information(x, x, 1, variant=2).item() == pytest.approx(25 / 12 - 1 - 6 / 5, abs=1e-12)


def test_tied_kth_neighbour_goes_to_the_lower_index():
    """Row 0 at (x, y) = (0, 0) has two joint neighbours at distance 1: row 1 = (1, 0) and row 2 =
    (0, -1). With k = 1, variant 2 takes row 1 (the lower index): eps_x(0) = 1, eps_y(0) = 0."""
    x = torch.tensor([[0.0], [1.0], [0.0], [5.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.0], [-1.0], [5.0]], dtype=torch.float64)
    expected, nx, ny = ksg_bruteforce(x.numpy(), y.numpy(), 1, 2)
    assert (nx[0], ny[0]) == (2, 1)  # |x_0 - x_j| <= 1: rows 1 and 2; |y_0 - y_j| <= 0: row 1
    assert ksg_mutual_information(x, y, 1, variant=2).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("inclusive", (False, True))
def test_range_count_op_is_exact(cpu_isa, isa, inclusive):
    """Pass 2 alone against NumPy, on integer data (distances tie with the radii exactly), every
    N around the panel widths, d = 1 and d past a register tile."""
    cpu_isa(isa)
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 5, 16, 33, 64, 65, 97):
        for d in (1, 7):
            z = torch.randint(-2, 3, (n, d), generator=g).double()
            radius = torch.randint(0, 4, (n,), generator=g).double()
            dist = (z[:, None, :] - z[None, :, :]).abs().amax(2)
            within = dist <= radius[:, None] if inclusive else dist < radius[:, None]
            expected = (within & ~torch.eye(n, dtype=torch.bool)).sum(1)
            for dtype in (torch.float64, torch.float32):
                for path in (0, 1, 2):  # auto, tiled, sweep
                    counts = torch.ops.eae_kernels.ksg_range_count(z.to(dtype), radius.to(dtype), inclusive, path)
                    assert torch.equal(counts, expected), (n, d, dtype, path)


@pytest.mark.parametrize("variant", (1, 2))
def test_cpu_paths_give_identical_results(variant):
    """The tiled and the sweep paths of both passes: bit-identical estimates, on continuous data
    and on integer data full of ties (where the k-th neighbour's tie rule matters)."""
    g = torch.Generator().manual_seed(0)
    cases = [random_pair(300, dx, dy, seed=dx + dy) for dx, dy in ((1, 1), (2, 3), (16, 1))]
    cases.append((torch.randint(-2, 3, (200, 1), generator=g).double(), torch.randint(-2, 3, (200, 2), generator=g).double()))
    # coordinates near the largest float: some differences overflow to inf (finite data, inf radii)
    huge = torch.tensor([1.7e308, 1.6e308, -1.7e308, -1.6e308, 1.65e308, -1.65e308], dtype=torch.float64)[:, None]
    cases.append((huge, torch.rand(6, 2, generator=g, dtype=torch.float64)))
    for x, y in cases:
        for dtype in (torch.float64, torch.float32):
            if dtype == torch.float32 and x.abs().max() > 1e38:
                continue
            for k in (1, 3):
                values = [
                    torch.ops.eae_kernels.ksg_mutual_information(x.to(dtype), y.to(dtype), k, variant, None, path).item()
                    for path in (0, 1, 2)
                ]
                assert values[0] == values[1] == values[2], (x.shape, y.shape, dtype, k, values)
                reference = ksg_mutual_information(x.to(dtype), y.to(dtype), k, variant=variant, backend="reference")
                assert abs(values[0] - reference.item()) < (1e-12 if dtype == torch.float64 else 1e-5)


def test_range_count_op_rejects_non_finite():
    with pytest.raises(RuntimeError, match="finite"):
        torch.ops.eae_kernels.ksg_range_count(torch.zeros(4, 2), torch.full((4,), math.inf), True)


@pytest.mark.parametrize("variant", (1, 2))
def test_reference_backend_matches_cpu(variant):
    x, y = random_pair(200, 3, 2, seed=5)
    a = ksg_mutual_information(x, y, 3, variant=variant, backend="cpu")
    b = ksg_mutual_information(x, y, 3, variant=variant, backend="reference")
    assert abs(a.item() - b.item()) < 1e-12


# ---------------------------------------------------------------------------------------------
# Batched and ragged sets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ("cpu", "reference"))
@pytest.mark.parametrize("variant", (1, 2))
def test_batched_equals_loop(backend, variant):
    xs, ys = zip(*(random_pair(120, 3, 2, seed=s) for s in range(4)))
    xb, yb = torch.stack(xs), torch.stack(ys)
    out = ksg_mutual_information(xb, yb, 3, variant=variant, backend=backend)
    loop = torch.stack([ksg_mutual_information(x, y, 3, variant=variant, backend=backend) for x, y in zip(xs, ys)])
    assert out.shape == (4,) and torch.equal(out, loop)


@pytest.mark.parametrize("backend", ("cpu", "reference"))
@pytest.mark.parametrize("variant", (1, 2))
def test_ragged_equals_slicing(backend, variant):
    xb, yb = random_pair(4 * 90, 2, 3, seed=7)
    xb, yb = xb.reshape(4, 90, 2), yb.reshape(4, 90, 3)
    lengths = torch.tensor([90, 4, 37, 61])
    out = ksg_mutual_information(xb, yb, 3, variant=variant, lengths=lengths, backend=backend)
    for b, m in enumerate(lengths.tolist()):
        one = ksg_mutual_information(xb[b, :m], yb[b, :m], 3, variant=variant, backend=backend)
        assert out[b].item() == one.item()
        if backend == "cpu":
            expected = ksg_kdtree(xb[b, :m].numpy(), yb[b, :m].numpy(), 3, variant)
            assert abs(out[b].item() - expected) < 1e-9


def test_empty_batch():
    x = torch.zeros(0, 10, 2)
    out = ksg_mutual_information(x, x)
    assert out.shape == (0,) and out.dtype == torch.float32


def test_ragged_ignores_rows_past_the_length():
    xb, yb = random_pair(2 * 50, 2, 2, seed=3)
    xb, yb = xb.reshape(2, 50, 2), yb.reshape(2, 50, 2)
    lengths = torch.tensor([30, 50])
    a = ksg_mutual_information(xb, yb, lengths=lengths)
    xb[0, 30:] = math.nan
    yb[0, 30:] = 1e30
    assert torch.equal(ksg_mutual_information(xb, yb, lengths=lengths), a)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", (1, 2))
@pytest.mark.parametrize("d, rho", [(1, 0.0), (1, 0.5), (1, 0.9), (4, 0.0)])
def test_correlated_gaussians_close_to_closed_form(variant, d, rho):
    x, y = correlated_gaussians(10_000, d, rho, seed=0)
    truth = gaussian_mutual_information(pair_covariance(d, rho), d).item()
    assert abs(truth - (-0.5 * d * math.log(1 - rho * rho))) < 1e-12
    assert abs(ksg_mutual_information(x, y, 3, variant=variant).item() - truth) < 0.02


@pytest.mark.parametrize(
    "variant, rho",
    [(1, 0.9), pytest.param(2, 0.9, marks=slow), pytest.param(1, 0.5, marks=slow), pytest.param(2, 0.5, marks=slow)],
)
def test_correlated_gaussians_in_4_plus_4_dims(variant, rho):
    """dx = dy = 4 with strong dependence: the KSG estimator itself is biased low at N = 10,000
    (by about 0.03 nats at rho = 0.5 and 0.3 at rho = 0.9, true I = 0.58 and 3.32; a known property
    of kNN MI estimators for strongly dependent variables, and what the KD-tree version gives too).
    Checked here: the value is the paper's estimator exactly (the independent KD-tree version), it
    is below the truth, and the gap shrinks as N grows."""
    truth = gaussian_mutual_information(pair_covariance(4, rho), 4).item()
    x, y = correlated_gaussians(10_000, 4, rho, seed=0)
    big = ksg_mutual_information(x, y, 3, variant=variant).item()
    assert abs(big - ksg_kdtree(x.numpy(), y.numpy(), 3, variant)) < 1e-9
    # the mean over the 10 disjoint sets of 1,000 rows estimates the N = 1,000 bias
    small = ksg_mutual_information(x.reshape(10, 1000, 4), y.reshape(10, 1000, 4), 3, variant=variant).mean().item()
    assert small < big < truth
    assert truth - big < (0.06 if rho == 0.5 else 0.45)


@pytest.mark.parametrize("variant", (1, 2))
def test_independent_uniform_near_zero(variant):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10_000, 2, generator=g, dtype=torch.float64)
    y = torch.rand(10_000, 3, generator=g, dtype=torch.float64)
    assert abs(ksg_mutual_information(x, y, 3, variant=variant).item()) < 0.02


def test_float32_and_half_inputs():
    x, y = correlated_gaussians(2000, 2, 0.6, seed=2, dtype=torch.float32)
    f32 = ksg_mutual_information(x, y)
    assert f32.dtype == torch.float32
    assert abs(f32.item() - ksg_mutual_information(x.double(), y.double()).item()) < 0.01
    for half in (torch.float16, torch.bfloat16):
        out = ksg_mutual_information(x.to(half), y.to(half))
        assert out.dtype == torch.float32
        assert out.item() == ksg_mutual_information(x.to(half).float(), y.to(half).float()).item()


# ---------------------------------------------------------------------------------------------
# Edge cases and bad input
# ---------------------------------------------------------------------------------------------


def test_no_gradient_and_no_silent_zeros():
    x, y = correlated_gaussians(100, 2, 0.5, seed=0)
    x.requires_grad_(True)
    out = ksg_mutual_information(x, y)
    assert not out.requires_grad
    with pytest.raises(RuntimeError):
        out.backward()


def test_nan_or_inf_gives_nan():
    x, y = random_pair(50, 2, 2, seed=0)
    x[3, 1] = math.nan
    assert math.isnan(ksg_mutual_information(x, y).item())
    xb, yb = random_pair(100, 2, 2, seed=0)
    xb, yb = xb.reshape(2, 50, 2), yb.reshape(2, 50, 2)
    yb[1, 0, 0] = math.inf
    out = ksg_mutual_information(xb, yb)
    assert not math.isnan(out[0].item()) and math.isnan(out[1].item())


def test_smallest_sets_and_non_contiguous_input():
    x, y = random_pair(4, 1, 1, seed=0)  # N = k + 1
    assert abs(ksg_mutual_information(x, y, 3).item() - ksg_kdtree(x.numpy(), y.numpy(), 3, 1)) < 1e-9
    big_x, big_y = random_pair(300, 6, 6, seed=1)
    xs, ys = big_x[::2, ::3], big_y.t().contiguous().t()[::2, 1:]
    expected = ksg_kdtree(xs.numpy().copy(), ys.numpy().copy(), 3, 1)
    assert abs(ksg_mutual_information(xs, ys).item() - expected) < 1e-9


def test_bad_input_raises_clear_errors():
    x, y = random_pair(20, 2, 3, seed=0)
    with pytest.raises(ValueError, match="same number of rows"):
        ksg_mutual_information(x, y[:19])
    with pytest.raises(ValueError, match="same batch size B and number of rows"):
        ksg_mutual_information(x.reshape(2, 10, 2), y.reshape(5, 4, 3))
    with pytest.raises(ValueError, match="must both be 2-D"):
        ksg_mutual_information(x.reshape(1, 20, 2), y)
    with pytest.raises(ValueError, match="N > k"):
        ksg_mutual_information(x, y, 20)
    with pytest.raises(TypeError, match="floating dtype"):
        ksg_mutual_information(x.long(), y)
    with pytest.raises(TypeError, match="same dtype"):
        ksg_mutual_information(x.float(), y)
    with pytest.raises(TypeError, match="k must be an int"):
        ksg_mutual_information(x, y, 2.5)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        ksg_mutual_information(x, y, 0)
    with pytest.raises(ValueError, match="variant must be 1 or 2"):
        ksg_mutual_information(x, y, variant=3)
    with pytest.raises(ValueError, match="backend must be one of"):
        ksg_mutual_information(x, y, backend="gpu")
    with pytest.raises(ValueError, match="at least one column"):
        ksg_mutual_information(x[:, :0], y)
    xb, yb = x.reshape(2, 10, 2), y.reshape(2, 10, 3)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 3"):
        ksg_mutual_information(xb, yb, lengths=torch.tensor([10, 3]))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 11"):
        ksg_mutual_information(xb, yb, lengths=torch.tensor([11, 10]))
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        ksg_mutual_information(xb, yb, lengths=torch.tensor([10, 10, 10]))
    with pytest.raises(TypeError, match="int64"):
        ksg_mutual_information(xb, yb, lengths=torch.tensor([10, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="only accepted with batched"):
        ksg_mutual_information(x, y, lengths=torch.tensor([20]))


def test_op_checks_guard_direct_callers():
    x, y = random_pair(20, 2, 3, seed=0)
    with pytest.raises(RuntimeError, match="set 0 has 20 rows"):
        torch.ops.eae_kernels.ksg_mutual_information(x, y, 20, 1, None)
    with pytest.raises(RuntimeError, match="variant must be 1 or 2"):
        torch.ops.eae_kernels.ksg_mutual_information(x, y, 3, 0, None)


def test_benchmark_smoke(tmp_path):
    """python -m benchmarks.ksg at tiny sizes: runs end to end, checks its values, writes its tables."""
    pytest.importorskip("sklearn")
    pytest.importorskip("threadpoolctl")
    from benchmarks import ksg as bench

    out = tmp_path / "ksg.md"
    bench.main(["--sizes", "100", "300", "--dims", "2", "--batch", "3", "50", "2", "--output", str(out)])
    text = out.read_text()
    assert "scikit-learn" in text and "| 2 | 300 |" in text and "Python loop of 3 calls" in text


def test_opcheck():
    x, y = random_pair(40, 2, 3, seed=0)
    torch.library.opcheck(torch.ops.eae_kernels.ksg_mutual_information.default, (x, y, 3, 1, None, 0))
    lengths = torch.tensor([20, 10])
    torch.library.opcheck(
        torch.ops.eae_kernels.ksg_mutual_information.default, (x.reshape(2, 20, 2), y.reshape(2, 20, 3), 3, 2, lengths, 0)
    )
    torch.library.opcheck(torch.ops.eae_kernels.ksg_range_count.default, (x, torch.rand(40, dtype=torch.float64), True, 0))


# ---------------------------------------------------------------------------------------------
# The Gaussian closed form
# ---------------------------------------------------------------------------------------------


def test_gaussian_mutual_information():
    assert gaussian_mutual_information(pair_covariance(1, 0.0), 1).item() == 0.0
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(5, dtype=torch.float64)
    scale = torch.diag(torch.tensor([1.0, 3.0, 0.2, 5.0, 2.0], dtype=torch.float64))
    mi = gaussian_mutual_information(cov, 2)
    # invariant to rescaling the coordinates; symmetric in X and Y; batches
    assert abs(gaussian_mutual_information(scale @ cov @ scale, 2) - mi) < 1e-12
    perm = torch.tensor([2, 3, 4, 0, 1])
    assert abs(gaussian_mutual_information(cov[perm][:, perm], 3) - mi) < 1e-12
    assert torch.allclose(gaussian_mutual_information(torch.stack([cov, cov]), 2), mi.expand(2))
    with pytest.raises(ValueError, match="dx must be an int"):
        gaussian_mutual_information(cov, 5)
    with pytest.raises(ValueError, match="square"):
        gaussian_mutual_information(cov[:3], 1)
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_mutual_information(-cov, 2)
