"""koleo_loss: DINOv2's KoLeo regulariser, its drop-in behaviour (values and gradients of DINOv2's
own formula), batches of sets, and the module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eae_kernels import KoLeoLoss, koleo_loss, reference

from conftest import random_rows


def dinov2_koleo(student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeoLoss.forward (dinov2/loss/koleo_loss.py), verbatim but for the autocast guard."""
    pdist = nn.PairwiseDistance(2, eps=1e-8)
    student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(student_output, student_output.t())
    n = student_output.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)  # Trick to fill diagonal with -1
    _, indices = torch.max(dots, dim=1)
    distances = pdist(student_output, student_output[indices])
    return -torch.log(distances + eps).mean()


@pytest.mark.parametrize("n,d", [(64, 16), (256, 384), (300, 768)])
def test_matches_dinov2_in_float32(n, d):
    x = random_rows(n, d, seed=n, dtype=torch.float32).requires_grad_(True)
    loss = koleo_loss(x)
    x_ref = x.detach().clone().requires_grad_(True)
    loss_ref = dinov2_koleo(x_ref)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    (g,) = torch.autograd.grad(loss, x)
    (g_ref,) = torch.autograd.grad(loss_ref, x_ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-6)


def test_matches_dinov2_for_bfloat16_inputs():
    """DINOv2 runs its loss outside autocast, on the features as given; on bf16 features our op
    computes in float32, i.e. DINOv2's formula on the same (bf16-valued) rows in float32."""
    x = random_rows(512, 384, seed=1, dtype=torch.bfloat16).requires_grad_(True)
    loss = koleo_loss(x)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(dinov2_koleo(x.detach().float()).item(), rel=1e-5)
    (g,) = torch.autograd.grad(loss, x)
    assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_matches_reference_float64_and_gradcheck(backend):
    x = random_rows(30, 5, seed=2).requires_grad_(True)
    loss = koleo_loss(x, backend=backend)
    loss_ref = reference.koleo_loss(x, exact=True)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(loss, x)[0], torch.autograd.grad(loss_ref, x)[0], rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: koleo_loss(t, backend=backend), (random_rows(12, 3, seed=3).requires_grad_(True),))


def test_batched_and_ragged_equal_loop():
    x = random_rows(4 * 20, 6, seed=4).view(4, 20, 6).requires_grad_(True)
    lengths = torch.tensor([20, 2, 11, 17])
    loss = koleo_loss(x, lengths=lengths)
    assert loss.shape == (4,)
    (g,) = torch.autograd.grad(loss.sum(), x)
    for b, n in enumerate(lengths.tolist()):
        xb = x[b, :n].detach().clone().requires_grad_(True)
        lb = koleo_loss(xb)
        torch.testing.assert_close(loss[b], lb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g[b, :n], torch.autograd.grad(lb, xb)[0], rtol=1e-12, atol=1e-12)
        assert torch.all(g[b, n:] == 0)


def test_duplicate_rows_are_finite():
    x = random_rows(10, 4, seed=5)
    x = torch.cat([x, x[:3]]).requires_grad_(True)
    loss = koleo_loss(x)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    torch.testing.assert_close(loss, reference.koleo_loss(x, exact=True), rtol=1e-12, atol=1e-12)


def test_module_and_errors():
    x = random_rows(16, 8, seed=6, dtype=torch.float32)
    assert KoLeoLoss()(x).item() == koleo_loss(x).item()
    assert "eps=1e-08" in repr(KoLeoLoss())
    with pytest.raises(ValueError, match="set 1 of x has N=1 rows"):
        koleo_loss(x.view(2, 8, 8), lengths=torch.tensor([8, 1]))
    with pytest.raises(ValueError, match="x has N=1 rows"):
        koleo_loss(x[:1])
    with pytest.raises(ValueError, match="group=.*one \\(N, d\\) set per rank"):
        koleo_loss(x.view(2, 8, 8), group=object())


def test_row_normalisation_matches_f_normalize():
    """koleo_loss's normalisation: F.normalize's values bit for bit, its gradient to rounding,
    including rows whose norm is clamped to eps (a zero row, a tiny row); gradcheck in float64."""
    from eae_kernels._normalize import normalize_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[1] = 0.0
    x[2] *= 1e-12
    weights = torch.randn(6, 5, generator=g, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        a = x.to(dtype).requires_grad_(True)
        b = x.to(dtype).requires_grad_(True)
        ya, yb = normalize_rows(a, 1e-8), torch.nn.functional.normalize(b, p=2.0, dim=-1, eps=1e-8)
        assert torch.equal(ya, yb)
        (ga,) = torch.autograd.grad((ya * weights.to(dtype)).sum(), a)
        (gb,) = torch.autograd.grad((yb * weights.to(dtype)).sum(), b)
        torch.testing.assert_close(ga, gb)
    smooth = torch.randn(6, 5, generator=g, dtype=torch.float64)  # away from the clamp's kink
    assert torch.autograd.gradcheck(lambda t: normalize_rows(t, 1e-8), (smooth.requires_grad_(True),))
    clamped = (0.01 * torch.randn(6, 5, generator=g, dtype=torch.float64)).requires_grad_(True)  # x / eps
    assert torch.autograd.gradcheck(lambda t: normalize_rows(t, 1.0), (clamped,))
