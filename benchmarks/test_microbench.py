"""pytest-benchmark microbenchmarks of the key cases (forward+backward unless said otherwise):

    pytest benchmarks --benchmark-only                       # all, a few minutes on 2 cores
    pytest benchmarks --benchmark-only -k "4096"             # one size
    pytest benchmarks --benchmark-only --benchmark-compare   # against a saved run (--benchmark-autosave)

Each group puts eae-kernels beside the baselines on the same input (torch.randn, float32, seed 0),
so pytest-benchmark's table reads as a speedup. Every benchmarked function is first checked
against the reference. The full sweep with memory and plots is `python -m benchmarks.run`.
"""

from __future__ import annotations

import pytest
import torch

import eae_kernels
from eae_kernels import reference

from .checks import check_distances, check_kl, reference_kth_distances
from .methods import faiss_method, keops_kl_entropy
from .run import make_input

torch.set_num_threads(min(2, torch.get_num_threads()))

# (N, d, k): the cases of the performance targets (benchmarks/report.py). The reference stops at 4096 (16384 takes ~15 s a call).
OURS_CASES = [(100, 64, 1), (4096, 64, 1), (16384, 64, 1), (4096, 128, 5)]
BASELINE_CASES = [(100, 64, 1), (4096, 64, 1), (4096, 128, 5)]


def _ids(case):
    return "N={}-d={}-k={}".format(*case)


def forward_backward(run, z, k):
    """A training step's share of the estimator: H and dH/dz."""
    zg = z.detach().clone().requires_grad_(True)

    def step():
        zg.grad = None
        h = run(zg, k)
        h.backward()
        return h

    return step, zg


def _bench(benchmark, step, case, rounds=None):
    benchmark.group = f"fwd+bwd {_ids(case)}"
    if rounds is None:
        return benchmark(step)
    return benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)


def _checked(run, z, k, reference_ok=True):
    """The reference's H and gradient on z, and run's, compared (where the reference fits)."""
    step, zg = forward_backward(run, z, k)
    h = step()
    if reference_ok:
        ref_step, ref_z = forward_backward(reference.kl_entropy, z, k)
        h_ref = ref_step()
        result = check_kl(h, zg.grad, h_ref, ref_z.grad)
        assert result.ok, result.detail
    return step


@pytest.mark.parametrize("case", OURS_CASES, ids=_ids)
def test_eae_kernels_cpu(benchmark, case):
    n, d, k = case
    z = make_input(n, d, 0, "cpu")
    step = _checked(eae_kernels.kl_entropy, z, k, reference_ok=n <= 4096)
    _bench(benchmark, step, case)


@pytest.mark.parametrize("case", BASELINE_CASES, ids=_ids)
def test_reference(benchmark, case):
    n, d, k = case
    step, _ = forward_backward(reference.kl_entropy, make_input(n, d, 0, "cpu"), k)
    _bench(benchmark, step, case, rounds=5 if n >= 4096 else None)


@pytest.mark.parametrize("case", BASELINE_CASES, ids=_ids)
def test_pykeops(benchmark, case):
    pykeops_torch = pytest.importorskip("pykeops.torch", reason="pykeops is not installed (pip install '.[bench]')")
    n, d, k = case
    z = make_input(n, d, 0, "cpu")
    step = _checked(lambda z, k: keops_kl_entropy(z, k, pykeops_torch.LazyTensor), z, k)  # also compiles
    _bench(benchmark, step, case, rounds=5 if n >= 4096 else None)


@pytest.mark.parametrize("case", BASELINE_CASES, ids=_ids)
def test_faiss_forward_only(benchmark, case):
    pytest.importorskip("faiss", reason="faiss is not installed (pip install '.[bench]')")
    n, d, k = case
    z = make_input(n, d, 0, "cpu")
    run = faiss_method(torch.device("cpu")).run
    result = check_distances(run(z, k), reference_kth_distances(z, k))
    assert result.ok, result.detail
    benchmark.group = f"fwd+bwd {_ids(case)}"  # beside the others, though it does no backward
    benchmark(run, z, k)


@pytest.mark.parametrize("case", [(4096, 64, 1), (16384, 64, 1)], ids=_ids)
def test_eae_kernels_cpu_forward(benchmark, case):
    """Forward only (no gradient): the number the FMA-peak comparison uses."""
    n, d, k = case
    z = make_input(n, d, 0, "cpu")
    benchmark.group = f"fwd {_ids(case)}"
    benchmark(eae_kernels.kl_entropy, z, k)


GPU_BACKENDS = ("cuda", "triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", [(4096, 64, 1), (65536, 64, 1), (262144, 64, 1)], ids=_ids)
def test_eae_kernels_gpu(benchmark, case, backend):
    n, d, k = case
    z = make_input(n, d, 0, "cuda")
    try:
        eae_kernels.kl_entropy(z[:8], 1, backend=backend)
    except RuntimeError as exc:
        pytest.skip(f"backend {backend!r} unavailable: {exc}")
    step, zg = forward_backward(lambda z, k: eae_kernels.kl_entropy(z, k, backend=backend), z, k)
    h = step()
    if n <= 4096:
        ref_step, ref_z = forward_backward(reference.kl_entropy, z, k)
        result = check_kl(h, zg.grad, ref_step(), ref_z.grad)
        assert result.ok, result.detail

    def synced():
        step()
        torch.cuda.synchronize()

    benchmark.group = f"gpu fwd+bwd {_ids(case)}"
    benchmark(synced)
