"""The Triton path of ksg_mutual_information: its range-count kernel (eae_kernels/triton_ksg.py)
and the composition with the Triton k-NN op, against the CPU op and an exact count.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1 is set
below, before triton is first used); the interpreter is slow, so the inputs are small, and its
blocks are 16 x 16, so N of 20-50 still spans several row blocks and column tiles.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from eae_kernels import ksg_mutual_information, triton_backend, triton_ksg  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

if triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE)) is not None:
    pytest.skip(
        f"triton backend unavailable: {triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE))}",
        allow_module_level=True,
    )


@pytest.mark.parametrize("inclusive", (False, True))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_range_count_exact_with_ties(inclusive, dtype):
    g = torch.Generator().manual_seed(0)
    for n, d in ((1, 1), (17, 1), (33, 3)):
        z = torch.randint(-2, 3, (n, d), generator=g).to(dtype)
        radius = torch.randint(0, 4, (n,), generator=g).to(dtype)
        expected = torch.ops.eae_kernels.ksg_range_count(z, radius, inclusive)
        counts = triton_ksg.range_count(z.to(DEVICE), radius.to(DEVICE), inclusive)
        assert torch.equal(counts.cpu(), expected), (n, d)


def test_range_count_non_contiguous():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64)[::2, ::2]
    radius = torch.rand(20, generator=g, dtype=torch.float64)
    expected = torch.ops.eae_kernels.ksg_range_count(z.contiguous(), radius, False)
    assert torch.equal(triton_ksg.range_count(z.to(DEVICE), radius.to(DEVICE), False).cpu(), expected)


@pytest.mark.parametrize("variant", (1, 2))
def test_mutual_information_matches_cpu(variant):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 36, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, 36, 1, generator=g, dtype=torch.float64) + x[..., :1]
    lengths = torch.tensor([36, 20, 4])
    ours = ksg_mutual_information(x.to(DEVICE), y.to(DEVICE), 3, variant=variant, lengths=lengths.to(DEVICE), backend="triton")
    expected = ksg_mutual_information(x, y, 3, variant=variant, lengths=lengths, backend="cpu")
    assert ours.shape == (3,) and not ours.requires_grad
    assert torch.allclose(ours.cpu(), expected, rtol=0, atol=1e-12)
