"""The public ops: ``kl_entropy`` and ``knn_distances``, their backend choice, and their fake
(meta) kernels for ``torch.compile``.

The compiled ops live in ``torch.ops.eae_kernels``: schemas and CPU kernels in
``csrc/bindings.cpp``, CUDA kernels in ``csrc/cuda/``, autograd in ``csrc/autograd.cpp``. This
module checks arguments, picks the backend and registers the fake kernels.
"""

from __future__ import annotations

import torch

from . import _extension, reference
from ._validate import (
    DEFAULT_EPS,
    accumulation_dtype,
    check_backend,
    check_eps,
    check_k,
    check_p,
    check_z,
)

__all__ = ["kl_entropy", "knn_distances"]


# ---------------------------------------------------------------------------------------------
# Backend choice
# ---------------------------------------------------------------------------------------------


def _unavailable_reason(backend: str, z: torch.Tensor) -> str | None:
    """Why ``backend`` cannot run on ``z``, or None when it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if z.device.type != "cpu":
            return f"it needs a CPU tensor; z is on {z.device}"
        return None if _extension.available() else _extension.unavailable_reason()
    if backend == "cuda":
        if z.device.type != "cuda":
            return f"it needs a CUDA tensor; z is on {z.device}"
        if not _extension.available():
            return _extension.unavailable_reason()
        if not _extension.with_cuda():
            return (
                "eae_kernels._C was built without its CUDA kernels (they are built when torch is a "
                "CUDA build and nvcc is found at install time)"
            )
        return None
    if backend == "triton":
        from . import triton_backend

        return triton_backend.unavailable_reason(z)
    raise AssertionError(backend)


# Which backends backend="auto" tries, in order, for each device type.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}


def _resolve_backend(backend: str, z: torch.Tensor) -> str:
    """The backend that will run: 'cpu', 'cuda', 'triton' or 'reference'. An explicitly
    requested backend that cannot run on ``z`` raises RuntimeError with the reason; 'auto' takes
    the first available of _AUTO_ORDER and otherwise falls back to the reference (warning once)."""
    backend = check_backend(backend)
    if backend == "auto":
        if z.device.type == "cpu" and _extension.available():  # the common case, first
            return "cpu"
        for candidate in _AUTO_ORDER.get(z.device.type, ()):
            if _unavailable_reason(candidate, z) is None:
                # --- backend self-check (eae_kernels/selfcheck.py): GPU kernels not yet verified on
                # hardware are checked once per process and device; a failing one is skipped. ---
                from . import selfcheck

                if not selfcheck.backend_healthy(candidate, z.device):
                    continue
                # --- end of the self-check ---
                return candidate
        _extension.warn_fallback_once(z.device)
        return "reference"
    reason = _unavailable_reason(backend, z)
    if reason is not None:
        raise RuntimeError(f"backend={backend!r} is unavailable: {reason}")
    return backend


def _kl_entropy_op(impl: str):
    if impl == "triton":
        from . import triton_backend

        return triton_backend.kl_entropy_op()
    return torch.ops.eae_kernels.kl_entropy


def _knn_op(impl: str):
    if impl == "triton":
        from . import triton_backend

        return triton_backend.knn_op()
    return torch.ops.eae_kernels.knn


# ---------------------------------------------------------------------------------------------
# kl_entropy: the fused op
# ---------------------------------------------------------------------------------------------


def kl_entropy(
    z: torch.Tensor,
    k: int = 1,
    *,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    backend: str = "auto",
    deterministic: bool = False,
    group=None,
    distributed: bool = False,
) -> torch.Tensor:
    r"""Kozachenko–Leonenko k-nearest-neighbour entropy of the rows of ``z``, in nats.

    .. math::

        H(z) = \psi(N) - \psi(k) + \log V_{d,p} + \frac{d}{N} \sum_i \tfrac12 \log(r_i^2 + \epsilon^2)

    where :math:`r_i` is the p-norm distance from row i to its k-th nearest *other* row (ties
    broken by the lower index), :math:`\psi` the digamma function and
    :math:`\log V_{d,p} = d \log(2\Gamma(1 + 1/p)) - \log\Gamma(1 + d/p)` the log volume of the
    unit p-ball in :math:`\mathbb{R}^d`.

    The floor ``eps`` enters only as :math:`\tfrac12\log(r_i^2 + \epsilon^2)` in place of
    :math:`\log r_i`: it keeps duplicate rows (:math:`r_i = 0`) finite, with a zero gradient,
    and changes nothing measurable for distances far above it (the default, 1e-8, is below the
    float32 spacing of values near 1). ``eps=0`` gives the bare estimator: -inf for duplicates.

    With ``k=1, p=2`` this is the estimator of the entropic-autoencoder paper,
    :math:`d \cdot \mathrm{mean}_i \log r_i + \log(N-1) + \log B_d + \gamma`, up to the constant
    :math:`\psi(N) - \log(N-1)` (:math:`\approx -1/(2N)`); the gradients are identical.

    Args:
        z: (N, d) tensor, rows are samples; N > k. float32 or float64; float16 and bfloat16
            inputs are computed in float32. Any strides (non-contiguous, expanded) are accepted.
        k: neighbour order, an int >= 1.
        p: the norm, 1, 2 or ``float('inf')``.
        eps: distance floor, a real >= 0 (see above).
        backend: ``"auto"`` (the fastest available for ``z.device``), ``"cpu"``, ``"cuda"``,
            ``"triton"`` or ``"reference"`` (the naive O(N^2)-memory implementation).
        deterministic: GPU backends: avoid float atomics so that the gradient is bit-identical
            from run to run. The CPU backend is always deterministic.
        group: a ``torch.distributed`` process group: estimate H over the *global* batch, the
            concatenation of the rows of every rank in the group (see
            ``eae_kernels.distributed``). Every rank gets the same H; backward gives each rank
            the gradient of the sum of every rank's loss with respect to its rows, which DDP's
            averaging turns into the single-process gradient on the global batch. Every rank
            must call it and backpropagate through it.
        distributed: ``True`` is ``group=`` the default process group.

    Returns:
        A 0-dim tensor: float32 for half inputs, else ``z``'s dtype. Differentiable: the forward
        computes dH/dz in the same pass (when ``z`` requires grad) and the backward scales it.
        NaN when ``z`` holds a NaN or inf. Twice differentiable (double backward gives the
        Hessian-vector product with the neighbours held fixed).
    """
    k = check_k(k)
    p = check_p(p)
    eps = check_eps(eps)
    if group is not None or distributed:  # N > k is checked on the global batch there
        from .distributed import global_kl_entropy

        return global_kl_entropy(z, k, p=p, eps=eps, backend=backend, deterministic=deterministic, group=group)
    check_z(z, k)
    impl = _resolve_backend(backend, z)
    if impl == "reference":
        return reference.kl_entropy(z, k, p, eps)
    compute_grad = bool(z.requires_grad and torch.is_grad_enabled())
    h, _, _ = _kl_entropy_op(impl)(z, k, p, eps, compute_grad, bool(deterministic))
    return h


def _kl_entropy_fake(z, k, p, eps, compute_grad, deterministic, row_begin=0, row_end=-1):
    begin, end = row_begin, (z.shape[0] if row_end < 0 else row_end)
    h = z.new_empty((), dtype=accumulation_dtype(z.dtype))
    grad = z.new_empty(z.shape) if compute_grad else z.new_empty((0,))
    nbr = z.new_empty((end - begin,) if compute_grad else (0,), dtype=torch.int64)
    return h, grad, nbr


# ---------------------------------------------------------------------------------------------
# knn_distances
# ---------------------------------------------------------------------------------------------


def knn_distances(
    z: torch.Tensor, k: int, *, p: float = 2.0, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest *other* rows of every row of ``z`` (N, d), without an N x N buffer.

    Returns ``(dist, idx)``: (N, k) p-norm distances in ascending order (float32 for half
    inputs, else ``z``'s dtype) and (N, k) int64 row indices; ties are broken by the lower index.
    ``dist`` is differentiable with respect to ``z``. A row holding NaN or inf gets NaN
    distances; every index is always a valid row.
    """
    k = check_k(k)
    check_z(z, k)
    p = check_p(p)
    impl = _resolve_backend(backend, z)
    if impl == "reference":
        return reference.knn_distances(z, k, p)
    return _knn_op(impl)(z, k, p)


def _knn_fake(z, k, p):
    n = z.shape[0]
    dist = z.new_empty((n, k), dtype=accumulation_dtype(z.dtype))
    idx = z.new_empty((n, k), dtype=torch.int64)
    return dist, idx


# ---------------------------------------------------------------------------------------------
# Registration with torch.library (only when the compiled ops exist)
# ---------------------------------------------------------------------------------------------

# The autograd formulas are registered in C++ (csrc/autograd.cpp); the fake kernels, which
# torch.compile uses to trace shapes, here.
if _extension.available():
    torch.library.register_fake("eae_kernels::kl_entropy")(_kl_entropy_fake)
    torch.library.register_fake("eae_kernels::knn")(_knn_fake)
