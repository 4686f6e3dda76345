"""knn_distances of the fused backends against a brute-force reference, including exact ties."""

from __future__ import annotations

import math

import pytest
import torch

from eae_kernels import knn_distances, reference

from conftest import HALF_DTYPES, P_VALUES, integer_rows, random_rows


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
@pytest.mark.parametrize("n,d,k", [(2, 1, 1), (17, 3, 5), (100, 16, 2), (500, 64, 8), (60, 200, 59)])
def test_matches_brute_force(device_backend, p, n, d, k):
    device, backend = device_backend
    z = random_rows(n, d, seed=n + k)
    dist, idx = knn_distances(z.to(device), k, p=p, backend=backend)
    ref_dist, ref_idx = reference.knn_distances(z, k, p, exact=True)
    assert dist.shape == idx.shape == (n, k) and idx.dtype == torch.int64
    torch.testing.assert_close(dist.cpu(), ref_dist, rtol=1e-12, atol=1e-12)
    assert torch.equal(idx.cpu(), ref_idx)
    assert (dist[:, 1:] >= dist[:, :-1]).all()  # ascending


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES], ids=str)
def test_ties_are_broken_by_the_lower_index(device_backend, p, dtype):
    """Small integers: exact in every float type, so the order must match exactly."""
    device, backend = device_backend
    z = integer_rows(300, 4, seed=1)
    dist, idx = knn_distances(z.to(dtype).to(device), 6, p=p, backend=backend)
    ref_dist, ref_idx = reference.knn_distances(z, 6, p, exact=True)
    assert dist.dtype == (torch.float32 if dtype in HALF_DTYPES else dtype)
    torch.testing.assert_close(dist.cpu().double(), ref_dist, rtol=1e-6, atol=0)
    assert torch.equal(idx.cpu(), ref_idx)


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [2, 15, 16, 17, 47, 48, 49, 100, 130])
def test_nearest_neighbour_ties_and_panel_edges(device_backend, p, dtype, n):
    """k = 1 (the CPU takes a running minimum on data whose keys cannot overflow): exact ties,
    duplicates and sizes around the kernel's column panels (16, 32, 48 lanes), self and cross."""
    device, backend = device_backend
    z = integer_rows(n, 3, seed=n, low=-1, high=2)
    y = integer_rows(n + 5, 3, seed=n + 1, low=-1, high=2)
    dist, idx = knn_distances(z.to(dtype).to(device), 1, p=p, backend=backend)
    ref_dist, ref_idx = reference.knn_distances(z, 1, p, exact=True)
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(dist.cpu().double(), ref_dist, rtol=1e-6, atol=0)
    dist, idx = knn_distances(z.to(dtype).to(device), y.to(dtype).to(device), 1, p=p, backend=backend)
    ref_dist, ref_idx = reference.knn_distances(z, 1, p, y=y, exact=True)
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(dist.cpu().double(), ref_dist, rtol=1e-6, atol=0)


def test_nearest_neighbour_ties_on_every_cpu_instruction_set():
    import eae_kernels

    ext = eae_kernels._extension._C
    for isa in ("generic", "avx2", "avx512"):
        if not ext.cpu_isa_supported(isa):
            continue
        ext.set_cpu_isa(isa)
        for n in (5, 17, 49, 100):
            z = integer_rows(n, 3, seed=n, low=-1, high=2)
            y = integer_rows(n + 3, 3, seed=n + 1, low=-1, high=2)
            for p in P_VALUES:
                ref_idx = reference.knn_distances(z, 1, p, exact=True)[1]
                ref_cross = reference.knn_distances(z, 1, p, y=y, exact=True)[1]
                for dtype in (torch.float32, torch.float64):
                    assert torch.equal(knn_distances(z.to(dtype), 1, p=p, backend="cpu")[1], ref_idx), (isa, n, p)
                    got = knn_distances(z.to(dtype), y.to(dtype), 1, p=p, backend="cpu")[1]
                    assert torch.equal(got, ref_cross), (isa, n, p)


@pytest.mark.parametrize("scale", [1e-15, 1.0, 1e18], ids=lambda s: f"{s:g}")
def test_nearest_neighbour_at_small_and_large_scales(scale):
    """float32 rows from tiny to near the overflow limit: the neighbours of a float64 scan."""
    z = (random_rows(70, 8, seed=5) * scale).float()
    dist, idx = knn_distances(z, 1)
    ref_dist, ref_idx = reference.knn_distances(z.double(), 1, 2.0, exact=True)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-6, atol=0)


def test_nearest_neighbour_when_every_distance_overflows():
    """Squared distances past float32's range are +inf for every pair (the general merge, not
    the running minimum): every row then takes the lowest other index."""
    z = (random_rows(70, 8, seed=5) * 1e30).float()
    dist, idx = knn_distances(z, 1)
    assert torch.isinf(dist).all()
    assert idx[0, 0] == 1 and (idx[1:, 0] == 0).all()


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_gradient_of_the_distances(device_backend, p):
    device, backend = device_backend
    z = random_rows(30, 4, seed=3).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: knn_distances(x, 3, p=p, backend=backend)[0], (z,))
    # and against autograd through the reference
    weights = random_rows(30, 3, seed=4).to(device)
    (g,) = torch.autograd.grad((knn_distances(z, 3, p=p, backend=backend)[0] * weights).sum(), z)
    z_ref = z.detach().cpu().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((reference.knn_distances(z_ref, 3, p, exact=True)[0] * weights.cpu()).sum(), z_ref)
    torch.testing.assert_close(g.cpu(), g_ref)


def test_no_n_by_n_memory():
    """N = 60,000 rows: an N x N float matrix would be 14 GB; the op must not need it."""
    z = random_rows(60_000, 2, seed=0, dtype=torch.float32)
    dist, idx = knn_distances(z, 1)
    assert torch.isfinite(dist).all() and dist.shape == (60_000, 1)
    # spot-check 20 rows against a direct scan
    for i in torch.randint(0, 60_000, (20,), generator=torch.Generator().manual_seed(0)).tolist():
        row = (z - z[i]).pow(2).sum(1).sqrt()
        row[i] = math.inf
        assert idx[i, 0].item() == int(torch.argmin(row))
