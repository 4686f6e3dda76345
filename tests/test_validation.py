"""Bad input raises a clear TypeError/ValueError that names the argument and what is accepted."""

from __future__ import annotations

import math

import pytest
import torch

import eae_kernels
from eae_kernels import KLEntropy, kl_entropy, knn_distances, reference

GOOD = torch.randn(10, 3)

BAD_CALLS = [
    # (description, call, exception, words the message must contain; {name}: the input's name)
    ("1-D input", lambda f: f(torch.randn(10)), ValueError, ["{name}", "2-D", "(N, d)"]),
    ("4-D input", lambda f: f(torch.randn(2, 2, 10, 3)), ValueError, ["{name}", "2-D", "3-D"]),
    ("N <= k", lambda f: f(torch.randn(3, 2), k=3), ValueError, ["N=3", "k=3", "N > k"]),
    ("N = 1", lambda f: f(torch.randn(1, 2)), ValueError, ["N=1", "N > k"]),
    ("d = 0", lambda f: f(torch.randn(10, 0)), ValueError, ["{name}", "d >= 1"]),
    ("int dtype", lambda f: f(torch.ones(10, 3, dtype=torch.int64)), TypeError, ["{name}", "float32", "int64"]),
    ("bool dtype", lambda f: f(torch.ones(10, 3, dtype=torch.bool)), TypeError, ["{name}", "torch.bool"]),
    ("complex dtype", lambda f: f(torch.ones(10, 3, dtype=torch.complex64)), TypeError, ["{name}", "complex64"]),
    ("not a tensor", lambda f: f([[0.0, 1.0], [1.0, 2.0]]), TypeError, ["{name}", "torch.Tensor", "list"]),
    ("k = 0", lambda f: f(GOOD, k=0), ValueError, ["k", ">= 1"]),
    ("k < 0", lambda f: f(GOOD, k=-2), ValueError, ["k", ">= 1"]),
    ("k float", lambda f: f(GOOD, k=1.5), TypeError, ["k", "int"]),
    ("k bool", lambda f: f(GOOD, k=True), TypeError, ["k", "int"]),
    ("p = 3", lambda f: f(GOOD, p=3), ValueError, ["p", "1, 2 or float('inf')"]),
    ("p = 0.5", lambda f: f(GOOD, p=0.5), ValueError, ["p", "1, 2"]),
    ("p string", lambda f: f(GOOD, p="inf"), TypeError, ["p", "float('inf')"]),
    ("p = -inf", lambda f: f(GOOD, p=-math.inf), ValueError, ["p"]),
]

EPS_AND_BACKEND_CALLS = [
    ("negative eps", lambda f: f(GOOD, eps=-1e-3), ValueError, ["eps", ">= 0"]),
    ("nan eps", lambda f: f(GOOD, eps=math.nan), ValueError, ["eps", "finite"]),
    ("eps string", lambda f: f(GOOD, eps="small"), TypeError, ["eps", "real number"]),
    ("unknown backend", lambda f: f(GOOD, backend="numpy"), ValueError, ["backend", "'auto'", "'cpu'", "'numpy'"]),
]


def _kl(z, k=1, **kw):
    return kl_entropy(z, k, **kw)


def _knn(z, k=1, **kw):
    return knn_distances(z, k, **kw)


def _ref_kl(z, k=1, p=2.0, **kw):
    return reference.kl_entropy(z, k, p, **kw)


def _module(z, k=1, **kw):
    return KLEntropy(k=k, **kw)(z)


def _check(call, fn, exc, words):
    with pytest.raises(exc) as info:
        call(fn)
    message = str(info.value)
    name = "x" if fn is _knn else "z"  # knn_distances(x, y=None, k, ...)
    for word in words:
        word = word.replace("{name}", name)
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("desc,call,exc,words", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
@pytest.mark.parametrize("fn", [_kl, _knn, _ref_kl, _module], ids=["kl_entropy", "knn_distances", "reference", "KLEntropy"])
def test_bad_input_raises_a_clear_error(desc, call, exc, words, fn):
    _check(call, fn, exc, words)


@pytest.mark.parametrize("desc,call,exc,words", EPS_AND_BACKEND_CALLS, ids=[c[0] for c in EPS_AND_BACKEND_CALLS])
@pytest.mark.parametrize("fn", [_kl, _module], ids=["kl_entropy", "KLEntropy"])
def test_bad_eps_or_backend_raises_a_clear_error(desc, call, exc, words, fn):
    _check(call, fn, exc, words)


def test_unavailable_backends_say_why():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend='cuda' is unavailable: it needs a CUDA tensor"):
            kl_entropy(GOOD, backend="cuda")
    with pytest.raises(RuntimeError, match="backend='triton' is unavailable"):
        import os

        if os.environ.get("TRITON_INTERPRET") == "1":
            pytest.skip("TRITON_INTERPRET=1 makes the triton backend run on CPU tensors")
        kl_entropy(GOOD, backend="triton")


def test_direct_op_calls_are_checked_too():
    """Callers of torch.ops.eae_kernels.* bypass the Python checks; the C++ ones still hold."""
    op = torch.ops.eae_kernels.kl_entropy
    with pytest.raises(RuntimeError, match="N > k"):
        op(torch.randn(3, 2), 3, 2.0, 1e-8, False, False)
    with pytest.raises(RuntimeError, match="p must be 1, 2 or inf"):
        op(torch.randn(5, 2), 1, 3.0, 1e-8, False, False)
    with pytest.raises(RuntimeError, match="row_begin"):
        op(torch.randn(5, 2), 1, 2.0, 1e-8, False, False, 4, 2)
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        op(torch.randn(5, 2), 1, 2.0, -1.0, False, False)


def test_fallback_without_extension_warns_once_and_cpu_backend_raises(monkeypatch):
    from eae_kernels import _extension

    monkeypatch.setattr(_extension, "_C", None)
    monkeypatch.setattr(_extension, "LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_extension, "_warned_fallback", False)
    z = torch.randn(20, 3, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="falls back to the O\\(N\\^2\\)-memory reference"):
        h = kl_entropy(z)
    assert h.item() == pytest.approx(reference.kl_entropy(z).item(), rel=1e-12)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        kl_entropy(z)
    with pytest.raises(RuntimeError, match="backend='cpu' is unavailable: .*simulated"):
        kl_entropy(z, backend="cpu")


def test_eps_zero_is_the_bare_estimator():
    z = torch.randn(50, 4, dtype=torch.float64)
    h0 = kl_entropy(z, eps=0.0).item()
    assert h0 == pytest.approx(reference.kl_entropy(z, eps=0.0).item(), rel=1e-12)
    dup = torch.cat([z, z[:1]])
    assert kl_entropy(dup, eps=0.0).item() == -math.inf
    assert eae_kernels.DEFAULT_EPS == 1e-8


# ---- The estimator family: pairs of sets, batches, lengths ----

X3 = torch.randn(3, 6, 2)
Y3 = torch.randn(3, 5, 2)

SET_CALLS = [
    # (description, call, exception, words the message must contain)
    ("mismatched d", lambda: eae_kernels.kl_divergence(torch.randn(6, 2), torch.randn(5, 3)), ValueError,
     ["same number of columns d", "d=2 for x", "d=3 for y"]),
    ("mismatched sets", lambda: eae_kernels.kl_cross_entropy(X3, torch.randn(2, 5, 2)), ValueError, ["number of sets B"]),
    ("2-D x, 3-D y", lambda: eae_kernels.kl_cross_entropy(X3[0], Y3), ValueError, ["both be 2-D", "both 3-D"]),
    ("mismatched dtype", lambda: eae_kernels.kl_cross_entropy(X3, Y3.double()), TypeError, ["same dtype"]),
    ("y on another device", lambda: eae_kernels.kl_cross_entropy(X3, Y3.to("meta")), ValueError, ["y must be on x's device"]),
    ("lengths shape", lambda: eae_kernels.kl_entropy(X3, lengths=torch.tensor([6, 6])), ValueError,
     ["lengths", "shape (B,) = (3,)", "(2,)"]),
    ("lengths dtype", lambda: eae_kernels.kl_entropy(X3, lengths=torch.tensor([6.0, 6, 6])), TypeError, ["lengths", "int64"]),
    ("lengths int32", lambda: eae_kernels.kl_entropy(X3, lengths=torch.tensor([6, 6, 6], dtype=torch.int32)), TypeError,
     ["lengths", "int64", "int32"]),
    ("lengths not a tensor", lambda: eae_kernels.kl_entropy(X3, lengths=[6, 6, 6]), TypeError, ["lengths", "tensor", "list"]),
    ("lengths device", lambda: eae_kernels.kl_entropy(X3, lengths=torch.tensor([6, 6, 6], device="meta")), ValueError,
     ["lengths", "device"]),
    ("length above the set size", lambda: eae_kernels.kl_entropy(X3, lengths=torch.tensor([6, 7, 6])), ValueError,
     ["lengths[1] = 7", "[0, 6]"]),
    ("negative length", lambda: eae_kernels.knn_distances(X3, 1, lengths_x=torch.tensor([6, -1, 6])), ValueError,
     ["lengths_x[1] = -1"]),
    ("lengths without a batch", lambda: eae_kernels.kl_entropy(X3[0], lengths=torch.tensor([6])), ValueError,
     ["lengths", "3-D (B, N, d)"]),
    ("k not below a ragged set's length", lambda: eae_kernels.kl_entropy(X3, 2, lengths=torch.tensor([6, 2, 6])), ValueError,
     ["set 1 of z", "N=2", "k=2"]),
    ("divergence: k not below x's set", lambda: eae_kernels.kl_divergence(X3, Y3, 3, lengths_x=torch.tensor([6, 6, 3])),
     ValueError, ["set 2 of x", "N=3", "k=3"]),
    ("y's set below k", lambda: eae_kernels.kl_cross_entropy(X3, Y3, 3, lengths_y=torch.tensor([5, 2, 5])), ValueError,
     ["set 1 of y", "N=2", "k=3"]),
    ("empty x set in an estimate", lambda: eae_kernels.kl_cross_entropy(X3, Y3, lengths_x=torch.tensor([6, 0, 6])),
     ValueError, ["set 1 of x is empty"]),
    ("knn cross: y below k", lambda: eae_kernels.knn_distances(X3[0], Y3[0], 6), ValueError, ["y has N=5", "k=6"]),
    ("lengths_y without y", lambda: eae_kernels.knn_distances(X3, 1, lengths_y=torch.tensor([1, 1, 1])), ValueError,
     ["lengths_y needs y"]),
    ("koleo lengths dtype", lambda: eae_kernels.koleo_loss(X3, lengths=torch.tensor([6, 6, 6.0])), TypeError, ["lengths", "int64"]),
]


@pytest.mark.parametrize("desc,call,exc,words", SET_CALLS, ids=[c[0] for c in SET_CALLS])
def test_bad_set_input_raises_a_clear_error(desc, call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


def test_direct_calls_of_the_set_ops_are_checked_too():
    op = torch.ops.eae_kernels
    with pytest.raises(RuntimeError, match="set 1 of x has 2 rows but k=2"):
        op.kl_entropy_sets(X3, torch.tensor([6, 2, 6]), 2, 2.0, 1e-8, False)
    with pytest.raises(RuntimeError, match="same number of columns"):
        op.kl_divergence(X3, torch.randn(3, 5, 4), None, None, 1, 2.0, 1e-8, False)
    with pytest.raises(RuntimeError, match="outside"):
        op.knn_sets(X3, None, torch.tensor([6, 9, 6]), None, 1, 2.0)
