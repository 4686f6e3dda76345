"""The ops compose with the rest of PyTorch: torch.library.opcheck, torch.compile(fullgraph=True),
double backward."""

from __future__ import annotations

import math

import pytest
import torch

from eae_kernels import kl_entropy, knn_distances

from conftest import P_VALUES, random_rows


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck_kl_entropy(device_backend, p, dtype):
    device, backend = device_backend
    if backend == "triton":
        pytest.skip("the triton op is checked in tests/test_triton.py")
    z = random_rows(40, 5, seed=1).to(dtype).to(device)
    op = torch.ops.eae_kernels.kl_entropy.default
    cases = [
        (z.requires_grad_(True), 2, p, 1e-8, True, False),
        (z.detach(), 1, p, 1e-8, False, False),
        (z.detach().requires_grad_(True), 3, p, 1e-8, True, True, 10, 30),  # a row range
    ]
    for args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("p", P_VALUES, ids=["p1", "p2", "pinf"])
def test_opcheck_knn(device_backend, p):
    device, backend = device_backend
    if backend == "triton":
        pytest.skip("the triton op is checked in tests/test_triton.py")
    z = random_rows(40, 5, seed=2).to(torch.float32).to(device).requires_grad_(True)
    torch.library.opcheck(torch.ops.eae_kernels.knn.default, (z, 4, p))


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager(device_backend):
    device, backend = device_backend
    torch._dynamo.reset()

    def loss_fn(z):
        recon = (z * z).mean()
        dist, _ = knn_distances(z, 2, backend=backend)
        return recon - 0.1 * kl_entropy(z, 3, backend=backend) + 1e-3 * dist.sum()

    compiled = torch.compile(loss_fn, fullgraph=True)
    for n in (64, 100):  # a second shape exercises the dynamic-shape path
        z = random_rows(n, 8, seed=n, dtype=torch.float32).to(device).requires_grad_(True)
        out = compiled(z)
        (g,) = torch.autograd.grad(out, z)
        z_eager = z.detach().clone().requires_grad_(True)
        out_eager = loss_fn(z_eager)
        (g_eager,) = torch.autograd.grad(out_eager, z_eager)
        torch.testing.assert_close(out, out_eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-6)


def test_double_backward_is_the_hessian_vector_product():
    """gradgradcheck passes (tests/test_kl_entropy.py); here: the HVP against finite differences
    of the gradient, including a row range."""
    z = random_rows(30, 3, seed=8)
    v = random_rows(30, 3, seed=9)
    for p in P_VALUES:
        for rows in [(0, -1), (5, 17)]:

            def grad_at(x):
                x = x.clone().requires_grad_(True)
                h = torch.ops.eae_kernels.kl_entropy(x, 2, p, 1e-8, True, False, *rows)[0]
                return torch.autograd.grad(h, x, create_graph=True)[0], x

            g, x = grad_at(z)
            (hvp,) = torch.autograd.grad((g * v).sum(), x)
            step = 1e-6
            fd = ((grad_at(z + step * v)[0] - grad_at(z - step * v)[0]) / (2 * step)).detach()
            # H is symmetric, so <v, dg/dz> = H v
            torch.testing.assert_close(hvp, fd, rtol=1e-5, atol=1e-6 * fd.abs().max().item())


def test_gradient_without_requires_grad_at_call_time_raises():
    """Asking for a gradient the forward did not compute fails loudly instead of returning zeros."""
    z = random_rows(20, 3)
    h, _, _ = torch.ops.eae_kernels.kl_entropy(z, 1, 2.0, 1e-8, False, False)
    z2 = z.clone().requires_grad_(True)
    h2, _, _ = torch.ops.eae_kernels.kl_entropy(z2, 1, 2.0, 1e-8, False, False)
    with pytest.raises(RuntimeError, match="gradient was not computed"):
        h2.backward()
    assert math.isfinite(h.item())
