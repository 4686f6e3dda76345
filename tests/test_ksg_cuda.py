"""ksg_mutual_information and the range-count op on CUDA against the CPU op (skipped without a
GPU). The CUDA path composes the CUDA k-NN op (p = inf on [x, y]) with the CUDA range-count
kernel (csrc/cuda/ksg_cuda.cu); both use the CPU kernels' arithmetic, so counts and estimates
match the CPU op."""

from __future__ import annotations

import pytest
import torch

import eae_kernels
from eae_kernels import ksg_mutual_information

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not eae_kernels._extension.with_cuda():
    pytest.skip("eae_kernels._C was built without its CUDA kernels", allow_module_level=True)


@pytest.mark.parametrize("inclusive", (False, True))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_range_count_matches_cpu(inclusive, dtype):
    g = torch.Generator().manual_seed(0)
    for n, d in ((1, 1), (33, 1), (257, 3), (1000, 70)):
        z = torch.randint(-2, 3, (n, d), generator=g).to(dtype)  # ties with the radii
        radius = torch.randint(0, 4, (n,), generator=g).to(dtype)
        expected = torch.ops.eae_kernels.ksg_range_count(z, radius, inclusive)
        got = torch.ops.eae_kernels.ksg_range_count(z.cuda(), radius.cuda(), inclusive)
        assert torch.equal(got.cpu(), expected), (n, d)


@pytest.mark.parametrize("variant", (1, 2))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_mutual_information_matches_cpu(variant, dtype):
    g = torch.Generator().manual_seed(1)
    for n, dx, dy, k in ((500, 1, 1, 3), (700, 8, 3, 5), (300, 16, 16, 1)):
        x = torch.randn(n, dx, generator=g, dtype=torch.float64)
        y = torch.rand(n, dy, generator=g, dtype=torch.float64)
        y[:, 0] += x[:, 0]
        x, y = x.to(dtype), y.to(dtype)
        expected = ksg_mutual_information(x, y, k, variant=variant)
        got = ksg_mutual_information(x.cuda(), y.cuda(), k, variant=variant, backend="cuda")
        assert got.device.type == "cuda" and got.dtype == expected.dtype
        assert abs(got.item() - expected.item()) < (1e-9 if dtype == torch.float64 else 1e-5)


def test_batched_ragged_matches_cpu():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 200, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 200, 2, generator=g, dtype=torch.float64) + x[..., :1]
    lengths = torch.tensor([200, 4, 150, 77])
    expected = ksg_mutual_information(x, y, lengths=lengths)
    got = ksg_mutual_information(x.cuda(), y.cuda(), lengths=lengths.cuda(), backend="auto")
    assert torch.allclose(got.cpu(), expected, rtol=0, atol=1e-9)
