"""The certified integer neighbour search (EAE_KERNELS_SEARCH=mixed) against the exact search:
neighbours, distances, values and gradients must be bit-identical, ties included, on the usual grid
and on inputs built to defeat the pruning (duplicates, clusters tighter than the quantisation
step, huge offsets, values near the float range limits, d = 1), for the self search (kl_entropy,
knn) and the search of x among a separate set y (kl_cross_entropy, kl_divergence, knn with y)."""

from __future__ import annotations

import pytest
import torch

from eae_kernels import _extension, kl_cross_entropy, kl_divergence, kl_entropy, knn_distances, koleo_loss

from conftest import HALF_DTYPES, adversarial_rows, clustered, integer_rows, random_rows

_C = _extension._C
pytestmark = pytest.mark.skipif(
    _C is None or not _C.cpu_mixed_search_supported(),
    reason="the mixed search needs the CPU extension and a CPU with AVX-512 VNNI",
)


def run(z: torch.Tensor, k: int, mode: str, monkeypatch) -> tuple[torch.Tensor, ...]:
    """(H, dH/dz, distances, indices) with the search forced to `mode`."""
    monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
    zz = z.clone().requires_grad_(True)
    h = kl_entropy(zz, k=k, backend="cpu")
    (grad,) = torch.autograd.grad(h, zz)
    dist, idx = knn_distances(z, k, backend="cpu")
    return h.detach(), grad, dist, idx


def assert_bit_identical(z: torch.Tensor, k: int, monkeypatch) -> bool:
    """Checks mixed == exact bit for bit; returns whether the mixed path actually ran."""
    return assert_same_outputs(run, (z, k), ("H", "grad", "dist", "idx"), monkeypatch)


def assert_same_outputs(runner, args, names, monkeypatch) -> bool:
    """runner(*args, mode, monkeypatch) with the exact and the mixed search: every output equal bit
    for bit (NaNs in the same places); returns whether the mixed path actually ran."""
    exact = runner(*args, "exact", monkeypatch)
    calls_before = _C.cpu_mixed_search_stats()[0]
    mixed = runner(*args, "mixed", monkeypatch)
    ran = _C.cpu_mixed_search_stats()[0] > calls_before
    for name, a, b in zip(names, exact, mixed, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        nan = torch.isnan(a) if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
        assert torch.equal(nan, torch.isnan(b) if b.is_floating_point() else nan), f"{name}: NaNs differ"
        assert torch.equal(a[~nan], b[~nan]), f"{name} differs"
    return ran


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
@pytest.mark.parametrize("n", [2, 3, 17, 100, 1000])
@pytest.mark.parametrize("d", [1, 3, 16, 64, 200])
def test_grid_is_bit_identical(n, d, dtype, monkeypatch):
    z = random_rows(n, d, seed=1000 * n + d, dtype=torch.float32).to(dtype)
    for k in (1, 2, 5):
        if k < n:
            assert assert_bit_identical(z, k, monkeypatch), "the mixed path did not run"


def test_auto_and_exact_modes(monkeypatch):
    """`exact` never takes the mixed path; `auto` takes it at a size past the crossover."""
    z = random_rows(2048, 64, seed=5, dtype=torch.float32)
    for mode, expected in (("exact", False), ("auto", True)):
        monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
        before = _C.cpu_mixed_search_stats()[0]
        knn_distances(z, 1, backend="cpu")
        assert (_C.cpu_mixed_search_stats()[0] > before) == expected, mode


@pytest.mark.parametrize("p,dtype", [(1.0, torch.float32), (float("inf"), torch.float32), (2.0, torch.float64)])
def test_only_l2_float32_takes_the_mixed_path(p, dtype, monkeypatch):
    monkeypatch.setenv("EAE_KERNELS_SEARCH", "mixed")
    z = random_rows(1500, 40, seed=9, dtype=dtype)
    before = _C.cpu_mixed_search_stats()[0]
    knn_distances(z, 2, p=p, backend="cpu")
    kl_entropy(z, k=2, p=p, backend="cpu")
    assert _C.cpu_mixed_search_stats()[0] == before


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_other_exact_kernels(isa, monkeypatch):
    """The refinement reproduces the FMA kernels (avx2 gives the avx512 kernel's keys); the
    portable kernel rounds separately, so with it the mixed path must stay off."""
    if not _C.cpu_isa_supported(isa):
        pytest.skip(f"{isa} not supported here")
    before_isa = _C.cpu_isa()
    _C.set_cpu_isa(isa)
    try:
        z = random_rows(1500, 40, seed=8, dtype=torch.float32)
        assert assert_bit_identical(z, 3, monkeypatch) == (isa != "generic")
    finally:
        _C.set_cpu_isa(before_isa)


def test_row_ranges_are_bit_identical(monkeypatch):
    """The distributed mode's row ranges (kl_entropy op with row_begin/row_end)."""
    z = random_rows(700, 32, seed=7, dtype=torch.float32)
    out = {}
    for mode in ("exact", "mixed"):
        monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
        out[mode] = torch.ops.eae_kernels.kl_entropy(z, 3, 2.0, 1e-8, True, False, 150, 533)
    for a, b in zip(out["exact"], out["mixed"]):
        assert torch.equal(a, b)


def adversarial_inputs():
    return adversarial_rows(600, 24)


@pytest.mark.parametrize("name,z", list(adversarial_inputs()), ids=lambda v: v if isinstance(v, str) else "")
def test_adversarial_inputs_are_bit_identical(name, z, monkeypatch):
    for k in (1, 5):
        assert_bit_identical(z, k, monkeypatch)


def test_fallback_blocks_are_counted(monkeypatch):
    """Clusters much tighter than the quantisation step cannot be pruned: blocks fall back to the
    exact kernel (and the result is still identical, see above)."""
    z = clustered(1000, 16, 4, 1e-7, seed=19)
    before = _C.cpu_mixed_search_stats()
    assert_bit_identical(z, 1, monkeypatch)
    after = _C.cpu_mixed_search_stats()
    assert after[2] > before[2]


def test_benchmark_of_the_search_paths_runs(tmp_path):
    """benchmarks/search_paths.py end to end on tiny inputs (python -m benchmarks.run --search-paths)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repo root
    from benchmarks import search_paths

    threads = torch.get_num_threads()
    try:
        results = search_paths.run(1, rounds=1, min_round_s=0.0, out_dir=tmp_path, sizes=(300,), dims=(16,),
                                   ks=(1,), adversarial_n=200, fma_seconds=0.01, cross_sizes=(300,),
                                   cross_dims=(16,))
    finally:
        torch.set_num_threads(threads)
    assert all(r["bit_identical"] for r in results["rows"])
    assert results["rows"][0]["mixed_path_taken"]
    assert [r["mixed_path_taken"] for r in results["rows"] if r["op"] == "kl_divergence"] == [True]
    assert "cpu exact" in (tmp_path / "cpu-search-paths.md").read_text()


def test_outliers_are_set_aside(monkeypatch):
    """A few far outlier rows do not set the quantisation step: the integer pass still runs (no
    block falls back), the outliers are re-measured by every row and searched exactly."""
    z = random_rows(1200, 32, seed=20, dtype=torch.float32)
    z[5] = 1e6
    z[700, 3] = -3e4
    z[701] = z[700]  # an outlier with a duplicate
    before = _C.cpu_mixed_search_stats()
    for k in (1, 3):
        assert assert_bit_identical(z, k, monkeypatch)
    after = _C.cpu_mixed_search_stats()
    assert after[1] > before[1] and after[2] == before[2]


# ---- The search among a separate set y (kl_cross_entropy, kl_divergence, knn with y) ----

CROSS_NAMES = ("D", "dD/dx", "dD/dy", "H(x, y)", "dH/dx", "dH/dy", "dist", "idx")


def run_cross(x, y, k, lengths_x, lengths_y, mode, monkeypatch) -> tuple[torch.Tensor, ...]:
    """kl_divergence (the self and the cross search in one pass) and kl_cross_entropy with both
    gradients, and knn_distances(x, y), with the search forced to `mode`."""
    monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
    xx, yy = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    out = []
    for fn in (kl_divergence, kl_cross_entropy):
        v = fn(xx, yy, k, lengths_x=lengths_x, lengths_y=lengths_y, backend="cpu")
        out += [v.detach(), *torch.autograd.grad(v.sum(), (xx, yy))]
    return (*out, *knn_distances(x, y, k, lengths_x=lengths_x, lengths_y=lengths_y, backend="cpu"))


def assert_cross_bit_identical(x, y, k, monkeypatch, lengths_x=None, lengths_y=None) -> bool:
    return assert_same_outputs(run_cross, (x, y, k, lengths_x, lengths_y), CROSS_NAMES, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
@pytest.mark.parametrize("nx,ny", [(3, 2), (17, 40), (100, 30), (700, 500)])
@pytest.mark.parametrize("d", [1, 3, 16, 64, 200])
def test_cross_grid_is_bit_identical(nx, ny, d, dtype, monkeypatch):
    x = random_rows(nx, d, seed=1000 * nx + d, dtype=torch.float32).to(dtype)
    y = (random_rows(ny, d, seed=1000 * ny + d + 1, dtype=torch.float32) + 0.25).to(dtype)
    for k in (1, 2, 5):
        if k < nx and k <= ny:
            assert assert_cross_bit_identical(x, y, k, monkeypatch), "the mixed path did not run"


def adversarial_pairs():
    """(name, x, y) pairs built to widen the candidate band or to break a careless bound."""
    x = random_rows(600, 24, seed=21, dtype=torch.float32)
    y = random_rows(500, 24, seed=22, dtype=torch.float32)
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(3))
    dup = torch.cat([x[:300], x[:300]])[perm]
    yield "y offset 1e4 from x", x, y + 1e4
    yield "y offset 1e3 along one axis", x, y + 1e3 * torch.eye(24)[0]
    yield "y == x (ties at 0 across sets)", x, x.clone()
    yield "y a permutation of x", x, x[perm]
    yield "duplicates in x and y", dup, dup[:500]
    yield "y = x + 1e-6 noise", x, x + 1e-6 * torch.randn(600, 24, generator=torch.Generator().manual_seed(4))
    yield "clusters, spread 1e-6", clustered(1500, 32, 10, 1e-6, seed=23), clustered(1200, 32, 10, 1e-6, seed=23)
    yield "clusters, spread 1e-3", clustered(1500, 64, 20, 1e-3, seed=24), clustered(900, 64, 20, 1e-3, seed=24)
    yield "near the float max", x * 1e18, y * 1e18
    yield "large enough to overflow keys", x * 3e18, y * 3e18
    yield "tiny (subnormal differences)", x * 1e-41, y * 1e-41
    yield "d = 1", random_rows(2000, 1, seed=25, dtype=torch.float32), random_rows(1500, 1, seed=26, dtype=torch.float32)
    yield "d = 1 integers", integer_rows(500, 1, seed=27, low=-50, high=50).float(), integer_rows(400, 1, seed=28, low=-50, high=50).float()
    yield "integer rows (exact ties)", integer_rows(800, 4, seed=29).float(), integer_rows(700, 4, seed=30).float()
    yield "all rows equal", torch.full((300, 16), 0.375), torch.full((200, 16), 0.375)
    yield "one far outlier in y", x, torch.cat([y, torch.full((1, 24), 1e6)])
    yield "one far outlier in x", torch.cat([x, torch.full((1, 24), -1e6)]), y
    yield "y far wider than x", x, 1e3 * y
    yield "heavy tails", (random_rows(800, 48, seed=31) ** 5).float(), (random_rows(700, 48, seed=32) ** 5).float()
    yield "nan row in y", x, torch.cat([y[:99], torch.full((1, 24), float("nan"))])
    yield "nan row in x", torch.cat([x[:99], torch.full((1, 24), float("nan"))]), y


@pytest.mark.parametrize("name,x,y", list(adversarial_pairs()), ids=lambda v: v if isinstance(v, str) else "")
def test_cross_adversarial_inputs_are_bit_identical(name, x, y, monkeypatch):
    for k in (1, 5):
        assert_cross_bit_identical(x, y, k, monkeypatch)


@pytest.mark.parametrize("name,x,y", [(n, x, y) for n, x, y in adversarial_pairs()
                                      if n in ("y == x (ties at 0 across sets)", "y offset 1e3 along one axis",
                                               "duplicates in x and y", "one far outlier in y")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_cross_mixed_path_runs_on_ties_and_offsets(name, x, y, monkeypatch):
    """These inputs are pruned by the integer pass (not refused): the identity above is the mixed
    path's."""
    assert assert_cross_bit_identical(x, y, 1, monkeypatch)


def test_cross_batches_with_lengths_are_bit_identical(monkeypatch):
    """One plan per set, with that set's lengths; padded rows get zero gradients in both paths."""
    g = torch.Generator().manual_seed(33)
    x = torch.randn(3, 600, 20, generator=g)
    y = torch.randn(3, 500, 20, generator=g) + 0.5
    y[1, :300] = x[1, :300]  # ties at distance 0 across the sets
    lengths_x = torch.tensor([600, 350, 7])
    lengths_y = torch.tensor([500, 300, 5])
    for k in (1, 5):
        assert assert_cross_bit_identical(x, y, k, monkeypatch, lengths_x, lengths_y)


def test_cross_auto_rule(monkeypatch):
    """`auto` takes both searches of kl_divergence past the crossover, and leaves the cross search
    exact when y is below it (the self search still takes the integer pass)."""
    monkeypatch.setenv("EAE_KERNELS_SEARCH", "auto")
    x = random_rows(2048, 64, seed=34, dtype=torch.float32)
    for ny, expected in ((2048, 2), (600, 1)):
        y = random_rows(ny, 64, seed=35, dtype=torch.float32)
        before = _C.cpu_mixed_search_stats()[0]
        kl_divergence(x, y, backend="cpu")
        assert _C.cpu_mixed_search_stats()[0] - before == expected, ny


@pytest.mark.parametrize("p,dtype", [(1.0, torch.float32), (float("inf"), torch.float32), (2.0, torch.float64)])
def test_cross_only_l2_float32_takes_the_mixed_path(p, dtype, monkeypatch):
    monkeypatch.setenv("EAE_KERNELS_SEARCH", "mixed")
    x = random_rows(1500, 40, seed=36, dtype=dtype)
    y = random_rows(1200, 40, seed=37, dtype=dtype)
    before = _C.cpu_mixed_search_stats()[0]
    knn_distances(x, y, 2, p=p, backend="cpu")
    kl_divergence(x, y, 2, p=p, backend="cpu")
    assert _C.cpu_mixed_search_stats()[0] == before


# ---- KoLeo (the nearest other normalised row) ----


def run_koleo(x, mode, monkeypatch) -> tuple[torch.Tensor, ...]:
    """koleo_loss and its gradient, and the koleo op on a row range (the distributed mode)."""
    monkeypatch.setenv("EAE_KERNELS_SEARCH", mode)
    xx = x.clone().requires_grad_(True)
    loss = koleo_loss(xx, backend="cpu")
    xn = torch.nn.functional.normalize(x, dim=-1)[None]
    n = x.shape[0]
    part = torch.ops.eae_kernels.koleo(xn, None, 1e-8, True, n // 3, n - 5)
    return (loss.detach(), *torch.autograd.grad(loss, xx), *part)


@pytest.mark.parametrize(
    "rows",
    [
        lambda: random_rows(300, 768, seed=7, dtype=torch.float32),
        lambda: random_rows(400, 384, seed=6, dtype=torch.float32),
        lambda: torch.randint(-1, 2, (200, 512), generator=torch.Generator().manual_seed(5)).float(),  # ties, duplicates
        lambda: random_rows(1, 512, seed=8, dtype=torch.float32).repeat(200, 1)
        + 1e-4 * random_rows(200, 512, seed=9, dtype=torch.float32),  # near-ties at a small scale
    ],
    ids=["gaussian-768", "gaussian-384", "integer-ties", "near-ties"],
)
def test_koleo_is_bit_identical(rows, monkeypatch):
    """KoLeo's search is the self search (k = 1) on normalised rows: the mixed path at every d."""
    assert assert_same_outputs(run_koleo, (rows(),), ("loss", "grad", "range loss", "range grad"), monkeypatch)
