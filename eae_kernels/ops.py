"""The public ops: ``kl_entropy``, ``kl_cross_entropy``, ``kl_divergence``, ``koleo_loss`` and
``knn_distances``.

The compiled ops live in ``torch.ops.eae_kernels``: schemas and CPU kernels in
``csrc/bindings.cpp``, CUDA kernels in ``csrc/cuda/``, autograd in ``csrc/autograd.cpp``, fake
kernels in ``_fake.py``. This module checks arguments and asks the backend table
(``backends.py``) which implementation runs.
"""

from __future__ import annotations

import torch

from . import _extension, _fake, backends
from ._normalize import normalize_rows
from ._validate import (
    DEFAULT_EPS,
    accumulation_dtype,
    check_eps,
    check_k,
    check_p,
    check_pair,
    check_set_sizes,
    check_sets,
    check_z,
)

__all__ = ["kl_entropy", "kl_cross_entropy", "kl_divergence", "koleo_loss", "knn_distances"]


def _op(backend: str, op: str, tensor: torch.Tensor, *inputs: torch.Tensor):
    """(the op's callable, its compute_grad argument) for the backend that runs ``op`` here.
    compute_grad: whether the fused kernels should form the gradient in the forward pass; the
    reference's value is differentiated by autograd instead (its gradient output is for the
    distributed mode only)."""
    impl = backends.resolve(backend, op, tensor)
    wants_grad = impl != "reference" and torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    return backends.op_for(impl, op), wants_grad




# ---------------------------------------------------------------------------------------------
# kl_entropy: the fused op
# ---------------------------------------------------------------------------------------------


def kl_entropy(
    z: torch.Tensor,
    k: int = 1,
    *,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    lengths: torch.Tensor | None = None,
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

    This is the self case of the package's one constant rule (see :func:`kl_cross_entropy`):
    the k-th neighbour is searched among the C = N - 1 other rows, constant
    :math:`\psi(C + 1) = \psi(N)`.

    Args:
        z: (N, d) tensor, rows are samples; N > k. float32 or float64; float16 and bfloat16
            inputs are computed in float32. Any strides (non-contiguous, expanded) are accepted.
            (B, N, d): B independent sets, one entropy each.
        k: neighbour order, an int >= 1.
        p: the norm, 1, 2 or ``float('inf')``.
        eps: distance floor, a real >= 0 (see above).
        lengths: with z (B, N, d), an optional (B,) int64 tensor on z's device: set b is its
            first ``lengths[b]`` rows (each must exceed k); the rows past it are ignored and get
            a zero gradient. N in the formula is then ``lengths[b]``.
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
        A 0-dim tensor for z (N, d), (B,) for z (B, N, d): float32 for half inputs, else
        ``z``'s dtype. Differentiable: the forward
        computes dH/dz in the same pass (when ``z`` requires grad) and the backward scales it.
        NaN when ``z`` holds a NaN or inf. Twice differentiable (double backward gives the
        Hessian-vector product with the neighbours held fixed).
    """
    k = check_k(k)
    p = check_p(p)
    eps = check_eps(eps)
    if group is not None or distributed:  # N > k is checked on the global batch there
        if lengths is not None or (isinstance(z, torch.Tensor) and z.dim() == 3):
            raise ValueError("kl_entropy(group=...) takes one (N, d) set per rank; lengths and batches of sets are not supported")
        from .distributed import global_kl_entropy

        return global_kl_entropy(z, k, p=p, eps=eps, backend=backend, deterministic=deterministic, group=group)
    if isinstance(z, torch.Tensor) and z.dim() == 2 and lengths is None:
        check_z(z, k)
        fn, compute_grad = _op(backend, "kl_entropy", z, z)
        h, _, _ = fn(z, k, p, eps, compute_grad, bool(deterministic))
        return h
    z3, lengths = check_sets(z, lengths, name="z", lengths_name="lengths")
    check_set_sizes(k, lengths, z3.shape[0], z3.shape[1], self_name="z")
    fn, compute_grad = _op(backend, "kl_entropy_sets", z3, z3)
    h, _, _ = fn(z3, lengths, k, p, eps, compute_grad)
    return h


# ---------------------------------------------------------------------------------------------
# Cross-entropy, divergence
# ---------------------------------------------------------------------------------------------

_PAIR_DOC = r"""

    Shapes: x (M, d) and y (N, d) give a 0-dim tensor; x (B, M, d) and y (B, N, d) give (B,),
    one value per pair of sets, with optional ``lengths_x``, ``lengths_y`` (B,) int64 tensors
    (rows at or past a set's length are ignored and get a zero gradient; M and N in the formula
    are then the set's lengths). x and y need the same d, dtype and device. float16/bfloat16 are
    computed in float32 (the result is float32). Differentiable with respect to both ``x`` and
    ``y`` (the forward forms both gradients in the same pass; once differentiable).

    Args:
        x: the query sample, rows are samples (at least one row; for the divergence more than k).
        y: the reference sample (at least k rows).
        k: neighbour order, an int >= 1.
        p: the norm, 1, 2 or ``float('inf')``.
        eps: distance floor, a real >= 0: :math:`\tfrac12\log(r^2 + \epsilon^2)` replaces
            :math:`\log r` as in :func:`kl_entropy`.
        lengths_x, lengths_y: optional (B,) int64 set lengths (3-D inputs only).
        backend: as in :func:`kl_entropy` (backends without this op: ``"auto"`` uses the
            reference).
    """


def _pair(op: str, x, y, k, p, eps, lengths_x, lengths_y, backend) -> torch.Tensor:
    k = check_k(k)
    p = check_p(p)
    eps = check_eps(eps)
    x3, lengths_x = check_sets(x, lengths_x, name="x", lengths_name="lengths_x")
    check_sets(y, name="y")
    check_pair(x, y)
    y3, lengths_y = check_sets(y, lengths_y, name="y", lengths_name="lengths_y")
    check_set_sizes(k, lengths_x, x3.shape[0], x3.shape[1], self_name="x" if op == "kl_divergence" else None,
                    lengths_y=lengths_y, rows_y=y3.shape[1])
    fn, compute_grad = _op(backend, op, x3, x3, y3)
    h, _, _ = fn(x3, y3, lengths_x, lengths_y, k, p, eps, compute_grad)
    return h if x.dim() == 3 else h[0]


def kl_cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    *,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""kNN estimate of the cross-entropy :math:`H(p_x, p_y) = -E_{p_x} \log p_y`, in nats, from
    samples x of p_x and y of p_y:

    .. math::

        H(x, y) = \psi(N + 1) - \psi(k) + \log V_{d,p} + \frac{d}{M} \sum_{i=1}^{M} \tfrac12 \log(\nu_i^2 + \epsilon^2)

    where :math:`\nu_i` is the p-norm distance from x_i to its k-th nearest row of y (ties broken
    by the lower index). This is the package's one constant rule, :math:`\psi(C + 1) - \psi(k) +
    \log V`, with C the number of candidate rows the neighbour is searched among: C = N here (all
    of y), C = N - 1 in :func:`kl_entropy` (the other rows of the set). Leonenko, Pronzato & Savani
    (2008) use :math:`\log N` in place of :math:`\psi(N + 1)`: they differ by O(1/N).
    """
    return _pair("kl_cross_entropy", x, y, k, p, eps, lengths_x, lengths_y, backend)


def kl_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int = 1,
    *,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""kNN estimate of the Kullback–Leibler divergence :math:`D(p_x \| p_y)`, in nats:
    ``kl_cross_entropy(x, y) - kl_entropy(x)`` with the same k, p, eps,

    .. math::

        D(x \| y) = \psi(N + 1) - \psi(M) + \frac{d}{M} \sum_{i=1}^{M}
            \left[\tfrac12 \log(\nu_i^2 + \epsilon^2) - \tfrac12 \log(\rho_i^2 + \epsilon^2)\right]

    with :math:`\rho_i` the distance from x_i to its k-th nearest *other* row of x and
    :math:`\nu_i` to its k-th nearest row of y. With eps = 0 this is Wang, Kulkarni & Verdú's
    (2009) estimator :math:`\frac{d}{M}\sum_i \log(\nu_i/\rho_i) + \log\frac{N}{M - 1}` up to
    :math:`\psi(N + 1) - \psi(M) - \log\frac{N}{M - 1} = O(1/N + 1/M)` (their m = N, n = M).
    Fused: each row block of x is searched in x and in y in one pass over the data, and both
    gradients come from the same pass. Needs more than k rows in each set of x.
    """
    return _pair("kl_divergence", x, y, k, p, eps, lengths_x, lengths_y, backend)


kl_cross_entropy.__doc__ += _PAIR_DOC
kl_divergence.__doc__ += _PAIR_DOC


# ---------------------------------------------------------------------------------------------
# KoLeo
# ---------------------------------------------------------------------------------------------


def koleo_loss(
    x: torch.Tensor,
    *,
    eps: float = 1e-8,
    group=None,
    lengths: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    r"""The KoLeo regulariser of DINOv2 (Sablayrolles et al. 2019), a drop-in for DINOv2's
    ``KoLeoLoss``, without its B x B matrix:

    .. math::

        \hat x_i = \frac{x_i}{\max(\|x_i\|_2, \epsilon)}, \qquad
        L = -\frac{1}{N} \sum_{i=1}^{N} \log(r_i + \epsilon)

    where :math:`r_i` is the Euclidean distance from :math:`\hat x_i` to its nearest *other*
    normalised row (ties broken by the lower index). The normalisation is done inside the op
    (``F.normalize(x, eps=eps)``), and the gradient flows through it. DINOv2 finds the neighbour
    as the largest dot product and measures it with ``nn.PairwiseDistance`` (which adds 1e-8 to
    each coordinate difference); on the same rows the values agree to float32 rounding. Half
    inputs are computed in float32 (as DINOv2's loss, which runs outside autocast).

    Args:
        x: (N, d) rows (N >= 2): a 0-dim loss. (B, N, d): one loss per set, (B,).
        eps: the floor of the norm and of the distance, as DINOv2's ``eps`` (default 1e-8).
        group: a ``torch.distributed`` process group: the loss of the *global* batch (every
            rank's rows concatenated, each row's neighbour searched among all of them), the same
            on every rank; see ``eae_kernels.distributed.global_koleo_loss``. (N, d) only.
        lengths: with x (B, N, d), optional (B,) int64 set lengths (each >= 2); rows past a set's
            length are ignored and get a zero gradient.
        backend: as in :func:`kl_entropy`.
    """
    eps = check_eps(eps)
    if group is not None:
        if lengths is not None or (isinstance(x, torch.Tensor) and x.dim() == 3):
            raise ValueError("koleo_loss(group=...) takes one (N, d) set per rank; lengths and batches of sets are not supported")
        from .distributed import global_koleo_loss

        return global_koleo_loss(x, eps=eps, backend=backend, group=group)
    x3, lengths = check_sets(x, lengths, name="x", lengths_name="lengths")
    check_set_sizes(1, lengths, x3.shape[0], x3.shape[1], self_name="x")
    xn = normalize_rows(x3.to(accumulation_dtype(x3.dtype)), eps)
    fn, compute_grad = _op(backend, "koleo", xn, xn)
    loss, _ = fn(xn, lengths, eps, compute_grad)
    return loss if x.dim() == 3 else loss[0]


# ---------------------------------------------------------------------------------------------
# knn_distances
# ---------------------------------------------------------------------------------------------


def knn_distances(
    x: torch.Tensor,
    y=None,
    k: int | None = None,
    *,
    p: float = 2.0,
    lengths_x: torch.Tensor | None = None,
    lengths_y: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest rows of every row of ``x``, without an M x N buffer.

    ``knn_distances(x, k=k)`` (or ``knn_distances(x, k)``, the single-set form: an int in
    ``y``'s place is k): the k nearest *other* rows of x. ``knn_distances(x, y, k)``: the k
    nearest rows of y (cross-set). Shapes: x (M, d) [, y (N, d)] give (M, k); x (B, M, d)
    [, y (B, N, d)] give (B, M, k), with optional ``lengths_x``, ``lengths_y`` (B,) int64 set
    lengths (the pytorch3d ``knn_points`` convention: rows past a set's length are ignored; padded
    query rows get distance 0 and index -1; an empty query set is allowed).

    Returns ``(dist, idx)``: p-norm distances in ascending order (float32 for half inputs, else
    x's dtype) and int64 row indices into the set searched; ties are broken by the lower index.
    ``dist`` is differentiable with respect to x (and y). A row holding NaN or inf gets NaN
    distances; every index of a valid row is a valid row. Needs more than k rows per set in the
    self case, at least k rows of y per set in the cross case (k defaults to 1).
    """
    if k is None and y is not None and not isinstance(y, torch.Tensor):  # knn_distances(z, k)
        y, k = None, y
    k = check_k(1 if k is None else k)
    p = check_p(p)
    if y is None and lengths_x is None and lengths_y is None and isinstance(x, torch.Tensor) and x.dim() == 2:
        check_z(x, k, name="x")
        return _op(backend, "knn", x)[0](x, k, p)
    x3, lengths_x = check_sets(x, lengths_x, name="x", lengths_name="lengths_x")
    y3 = None
    if y is not None:
        check_sets(y, name="y")
        check_pair(x, y)
        y3, lengths_y = check_sets(y, lengths_y, name="y", lengths_name="lengths_y")
    elif lengths_y is not None:
        raise ValueError("lengths_y needs y: without y the rows of x are searched among themselves (use lengths_x)")
    check_set_sizes(k, lengths_x, x3.shape[0], x3.shape[1], self_name="x" if y is None else None,
                    lengths_y=lengths_y, rows_y=None if y3 is None else y3.shape[1], allow_empty=True)
    dist, idx = _op(backend, "knn_sets", x3)[0](x3, y3, lengths_x, lengths_y, k, p)
    return (dist, idx) if x.dim() == 3 else (dist[0], idx[0])


# ---------------------------------------------------------------------------------------------
# Registration with torch.library (only when the compiled ops exist)
# ---------------------------------------------------------------------------------------------

# The autograd formulas are registered in C++ (csrc/autograd.cpp); the fake kernels, which
# torch.compile uses to trace shapes, in _fake.py.
if _extension.available():
    _fake.register()
