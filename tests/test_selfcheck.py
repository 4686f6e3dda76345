"""The backend self-check (eae_kernels/selfcheck.py): it passes on the Triton kernels (in Triton's
interpreter without a GPU), it catches a backend whose gradient is wrong, and backend="auto"
then skips that backend, warning once with the failing path.

Without a GPU, "auto" never checks anything (CPU tensors take the CPU kernel, the ground truth),
so the auto tests route CPU tensors through the check: Triton's interpreter stands in for a GPU
backend and the CPU kernel is made to look unavailable to the backend table's "auto" loop.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
pytest.importorskip("triton")

from eae_kernels import _extension, backends, selfcheck, triton_backend  # noqa: E402

DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

if triton_backend.unavailable_reason(torch.zeros(2, 1, device=DEVICE)) is not None:
    pytest.skip("triton backend unavailable", allow_module_level=True)


@pytest.fixture
def wrong_triton_gradient(monkeypatch):
    """A planted bug: the Triton op's gradient scaled by 1.001 (values and neighbours right)."""
    real = triton_backend.kl_entropy_op

    def planted():
        op = real()

        def wrong(z, k, p, eps, compute_grad, deterministic, row_begin=0, row_end=-1):
            h, grad, nbr = op(z, k, p, eps, compute_grad, deterministic, row_begin, row_end)
            return h, grad * 1.001, nbr

        return wrong

    monkeypatch.setattr(triton_backend, "kl_entropy_op", planted)


@pytest.fixture
def auto_checks_triton(monkeypatch):
    """backend="auto" on CPU tensors tries triton, then cpu (made unavailable), then the reference,
    and checks backends on CPU devices too; nothing remembered from other tests."""
    monkeypatch.delenv(selfcheck.AUTO_SELFCHECK_ENV, raising=False)
    monkeypatch.setattr(selfcheck, "AUTO_CHECK_DEVICE_TYPES", ("cpu", "cuda"))
    monkeypatch.setattr(selfcheck, "_HEALTH", {})
    monkeypatch.setattr(backends, "AUTO_ORDER", {"cpu": ("triton", "cpu"), "cuda": ("triton",)})
    no_cpu_kernel = dataclasses.replace(backends.BACKENDS["cpu"], why_unavailable=lambda device: "made unavailable by the test")
    monkeypatch.setitem(backends.BACKENDS, "cpu", no_cpu_kernel)
    monkeypatch.setattr(_extension, "warn_fallback_once", lambda device, op=None: None)


def test_selfcheck_passes(capsys):
    """The whole check, every case, as `python -m eae_kernels.selfcheck --device cpu` runs it."""
    assert selfcheck.main(["--device", DEVICE]) == 0
    out = capsys.readouterr().out
    checked = ["triton"] + (["cuda"] if DEVICE.startswith("cuda") and _extension.with_cuda() else [])
    n = sum(len(selfcheck.cases_for(backend)) for backend in checked)
    assert f"{n} of {n} cases passed" in out and "FAIL" not in out
    for path in ("small", "tiled-atomic", "tiled-gather", "knn"):
        assert f"triton   {path}" in out
    assert "same" in out  # deterministic cases were repeated


def test_cases_cover_every_path_and_option():
    cases = selfcheck.FULL
    assert {c.path for c in cases} == {"small", "tiled-atomic", "tiled-gather", "knn", "sets", "cross"}
    assert {c.k for c in cases} == {1, 5}
    assert {c.p for c in cases} == {1.0, 2.0, float("inf")}
    assert {c.dtype for c in cases} == {torch.float32, torch.bfloat16}
    assert {c.layout for c in cases} == {"contiguous", "transposed"}
    assert {c.data for c in cases} == {"random", "ties"}


def test_a_wrong_gradient_is_caught_and_reported(wrong_triton_gradient, capsys):
    results = [r for r in selfcheck.check(["triton"], DEVICE, quick=True) if r.case.op == "kl_entropy"]
    assert results and not any(r.passed for r in results)
    assert all(r.detail.startswith("gradient off by") and ";" not in r.detail for r in results)  # only that
    assert all(abs(r.max_error - 1e-3) < 1e-5 for r in results)
    assert selfcheck.main(["--device", DEVICE, "--backends", "triton", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "<- gradient off" in out and "FAILED" in out


def test_a_perturbed_neighbour_is_caught(monkeypatch):
    real = triton_backend.knn_op

    def planted():
        op = real()
        return lambda z, k, p: (lambda dist, idx: (dist, idx.flip(0)))(*op(z, k, p))

    monkeypatch.setattr(triton_backend, "knn_op", planted)
    results = [r for r in selfcheck.check(["triton"], DEVICE) if r.case.path == "knn"]
    assert results and all(not r.passed and "neighbours differ" in r.detail for r in results)


def test_auto_skips_a_failing_backend_and_warns_once(auto_checks_triton, wrong_triton_gradient):
    z = torch.randn(30, 3, device=DEVICE)
    with pytest.warns(RuntimeWarning, match=r"triton backend failed its self-check .*\(path small, k=1 p=2"):
        assert backends.resolve("auto", "kl_entropy", z) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second check, no second warning
        assert backends.resolve("auto", "kl_entropy", z) == "reference"


def test_auto_uses_a_healthy_backend(auto_checks_triton):
    z = torch.randn(30, 3, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert backends.resolve("auto", "kl_entropy", z) == "triton"
    assert selfcheck._HEALTH == {("triton", str(torch.device(DEVICE))): True}


def test_the_environment_variable_turns_the_check_off(auto_checks_triton, wrong_triton_gradient, monkeypatch):
    monkeypatch.setenv(selfcheck.AUTO_SELFCHECK_ENV, "0")
    z = torch.randn(30, 3, device=DEVICE)
    assert backends.resolve("auto", "kl_entropy", z) == "triton"
    assert selfcheck._HEALTH == {}


def test_cpu_and_reference_backends_are_never_checked(monkeypatch):
    monkeypatch.setattr(selfcheck, "check", None)  # would raise if called
    assert selfcheck.backend_healthy("cpu", "cpu") and selfcheck.backend_healthy("reference", "cpu")
    assert selfcheck.backend_healthy("triton", "cpu")  # CPU devices are not checked by default


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_first_triton_call_during_capture_raises_a_clear_error():
    z = torch.randn(777, 5, device="cuda")  # a shape class no other test uses
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="eae_kernels.warmup"):
        with torch.cuda.graph(graph):
            triton_backend.kl_entropy_op()(z, 1, 2.0, 1e-8, True, True)
    selfcheck.warmup(z, 1, deterministic=True, backend="triton")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_backend.kl_entropy_op()(z, 1, 2.0, 1e-8, True, True)
    graph.replay()
    torch.cuda.synchronize()
    eager = triton_backend.kl_entropy_op()(z, 1, 2.0, 1e-8, True, True)
    assert all(torch.equal(a, b) for a, b in zip(out, eager))
