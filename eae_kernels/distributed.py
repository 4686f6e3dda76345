r"""The entropy of the *global* batch: the rows of every rank of a ``torch.distributed`` group.

``kl_entropy(z, k, group=g)`` (or ``distributed=True`` for the default group) calls
:func:`global_kl_entropy`. With ``W`` ranks, rank ``r`` holding ``n_r`` rows (sizes may differ)
and ``N = sum_r n_r``, the estimate is that of one process holding the concatenation
``Z = [z_0; z_1; ...; z_{W-1}]`` (ranks in group-rank order):

    H(Z) = psi(N) - psi(k) + log V(d, p) + (d / N) * sum_{i < N} 0.5 * log(r_i^2 + eps^2)

How (only torch.distributed collectives; NCCL on GPU, gloo on CPU):

1. all-gather the row counts (and d, dtype, whether a gradient is wanted, checked to agree);
2. all-gather the rows, padded to the largest count, into ``Z`` on every rank;
3. rank r evaluates the fused op on all of ``Z`` restricted to its own row range: its partial
   ``h_r`` (the log terms of its rows; the constant on the rank that holds row 0) and the
   gradient ``dh_r/dZ`` for *all* rows: a row's k-th neighbour may live on another rank and
   receives a scatter term;
4. all-reduce (sum) ``H = sum_r h_r``: every rank returns the same value.

Backward: rank r puts ``dh_r/dZ`` and its incoming gradient ``g_r`` into one buffer, one
reduce-scatter (NCCL; an all-reduce elsewhere) sums the buffers over ranks, and rank r keeps
``(sum_s g_s) * dH/dz_r``. That is the exact autograd of the collective: the gradient of the
*sum of every rank's loss*, as for any differentiable collective. Under DistributedDataParallel,
which averages the parameter gradients over ranks, ``loss = mse - beta * kl_entropy(z,
distributed=True)`` on every rank therefore gives exactly the gradient of one process training
on the global batch with ``mean mse - beta * H``. (If every rank calls ``H.backward()``, each
rank's ``z.grad`` is ``W * dH/dz_r``; backpropagate ``H / W`` to get ``dH/dz_r`` itself.)

Every rank must call it with the same ``k, p, eps`` and backpropagate through the result (as
with DDP): the collectives in backward otherwise wait for the missing ranks. Inconsistent row
widths, dtypes or gradient needs raise the same error on every rank instead of hanging.

Communication per call, per rank (ring algorithms; ``b`` = bytes per element of z, ``a`` = of
the accumulation type: 4 for float32/float16/bfloat16 inputs, 8 for float64; ``m = max_r n_r``):

- forward: all-gather of the rows, ``(W-1) m d b`` bytes received (``W m d`` padded elements
  in all, ``N d`` when the sizes are even); all-gather of ``4 W`` int64 (the sizes);
  all-reduce of one scalar (H);
- backward: one reduce-scatter of ``W (m d + 1)`` accumulation-type elements, ``(W-1)(m d + 1) a``
  bytes sent and received (NCCL), or an all-reduce of it, about twice that (other backends).

Example: 8 GPUs x 100 rows, d = 64, float32: 179 KB in and 179 KB out per rank and step. DDP's
own all-reduce of P float32 parameters moves 2 (W-1)/W 4P bytes, 70 MB for P = 10 million.
Latency, not bandwidth, dominates at these sizes: 3 collectives forward, 1 backward. The row
counts are copied to the host (one small synchronisation per call) to size the buffers.

Memory per rank: the gathered ``Z`` and the saved ``dh_r/dZ`` (``N * d`` elements each, kept
from forward to backward), the padded all-gather buffer (``W * m * d``) and, in backward, the
reduction buffer (``W * (m * d + 1)``), plus the fused op's own O(N d) work space: O(N d) in
all, never N x N. The search work is split: rank r compares its n_r rows with all N rows.

Not supported: double backward through the collectives (the single-process op has it).

``koleo_loss(x, group=g)`` (:func:`global_koleo_loss`) uses the same machinery for the KoLeo loss of
the global batch: each rank L2-normalises its rows (with autograd), the normalised rows are
gathered, rank r computes the share ``-(1/N) sum_{i in its rows} log(r_i + eps)`` of the loss and
the gradient of that share for all N rows, and the shares are summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from . import backends
from ._normalize import normalize_rows
from ._validate import DEFAULT_EPS, FLOAT_DTYPES, accumulation_dtype, check_eps, check_k, check_p, check_z

__all__ = ["global_kl_entropy", "global_koleo_loss"]


def global_kl_entropy(
    z: torch.Tensor,
    k: int = 1,
    *,
    p: float = 2.0,
    eps: float = DEFAULT_EPS,
    backend: str = "auto",
    deterministic: bool = False,
    group=None,
) -> torch.Tensor:
    """Kozachenko–Leonenko entropy of the rows of every rank of ``group``, concatenated.

    The arguments are those of :func:`eae_kernels.kl_entropy`; see this module's docstring for
    the method, the gradient convention and the communication and memory costs.

    Args:
        z: (n_r, d) tensor: this rank's rows. ``n_r`` may differ between ranks and may even be
            0; the global row count must exceed ``k``. d, dtype and ``z.requires_grad`` must be
            the same on every rank.
        k: neighbour order, an int >= 1.
        p: the norm, 1, 2 or ``float('inf')``.
        eps: distance floor, a real >= 0.
        backend: as in ``kl_entropy``, for this rank's part ("auto", "cpu", "cuda", "triton" or
            "reference").
        deterministic: passed to this rank's kernel. The cross-rank sums are the collectives'.
        group: a ``torch.distributed`` ProcessGroup of which this process is a member, or None
            for the default group (``torch.distributed.init_process_group`` must have run).

    Returns:
        A 0-dim tensor, the same on every rank: H of the global batch (float32 for half inputs,
        else z's dtype). Backward gives rank r the gradient of the sum of every rank's loss with
        respect to its rows (see the module docstring).
    """
    k = check_k(k)
    check_z(z, -1)  # any local row count, even 0: N > k is checked on the global batch
    p = check_p(p)
    eps = check_eps(eps)
    impl = backends.resolve(backend, "kl_entropy", z)  # before any collective: a local error stops here
    op = backends.op_for(impl, "kl_entropy")
    deterministic = bool(deterministic)

    def partial(z_all, begin, end, compute_grad):
        h, grad, _ = op(z_all, k, p, eps, compute_grad, deterministic, begin, end)
        return h.detach(), (grad if compute_grad else None)

    return _global_estimate(z, partial, group, min_rows=k + 1, what=f"k={k}: the k-th nearest other row needs N > k")


def global_koleo_loss(x: torch.Tensor, *, eps: float = 1e-8, backend: str = "auto", group=None) -> torch.Tensor:
    """The KoLeo loss of the rows of every rank of ``group``, concatenated (see
    :func:`eae_kernels.koleo_loss`): every rank gets the same loss, ``-(1/N) sum_i log(r_i + eps)``
    over the N rows of the global batch, r_i the distance from normalised row i to its nearest
    other row anywhere in the global batch. Gradient convention and costs as for
    :func:`global_kl_entropy` (plus the local normalisation, differentiated by autograd).

    Args:
        x: (n_r, d) tensor: this rank's rows (n_r may differ between ranks, even be 0; the global
            batch needs at least 2 rows). d, dtype and requires-grad must agree across ranks.
        eps: as in ``koleo_loss``. backend: as in ``koleo_loss``, for this rank's part.
        group: a ProcessGroup containing this process, or None for the default group.
    """
    check_z(x, -1, name="x")
    eps = check_eps(eps)
    impl = backends.resolve(backend, "koleo", x)
    op = backends.op_for(impl, "koleo")
    xn = normalize_rows(x.to(accumulation_dtype(x.dtype)), eps)

    def partial(x_all, begin, end, compute_grad):
        loss, grad = op(x_all[None], None, eps, compute_grad, begin, end)
        return loss[0].detach(), (grad[0] if compute_grad else None)

    return _global_estimate(xn, partial, group, min_rows=2, what="KoLeo needs a nearest other row")


def _global_estimate(z: torch.Tensor, partial, group, *, min_rows: int, what: str) -> torch.Tensor:
    """The value of the global batch from each rank's ``partial(z_all, begin, end, compute_grad)
    -> (share of the value, d share / d z_all or None)``."""
    group = _resolve_group(group)
    compute_grad = bool(z.requires_grad and torch.is_grad_enabled())
    layout = _BatchLayout.gather(z, min_rows, what, compute_grad, group)
    return _GlobalEstimate.apply(z, layout, partial, compute_grad)


# ---------------------------------------------------------------------------------------------
# Process group and batch layout
# ---------------------------------------------------------------------------------------------


def _resolve_group(group):
    """``group`` itself, or the default group for None; raises when there is none."""
    if not dist.is_available():
        raise RuntimeError(
            "kl_entropy(group=..., distributed=True) needs torch.distributed, which this build of "
            "torch lacks"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"group must be a torch.distributed ProcessGroup or None (the default group); "
            f"got {type(group).__name__}"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            "kl_entropy(group=..., distributed=True) needs an initialised process group: call "
            "torch.distributed.init_process_group() first (torchrun sets its environment)"
        )
    if group is None:
        group = dist.group.WORLD
    if dist.get_rank(group) < 0:
        raise ValueError("group must contain this process; this rank is not a member of it")
    return group


@dataclass(frozen=True)
class _BatchLayout:
    """Where each rank's rows sit in the global batch."""

    group: object
    rank: int  # this process's rank in the group
    sizes: tuple[int, ...]  # row count of each rank, in group-rank order

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def max_rows(self) -> int:
        return max(self.sizes)

    def begin(self, rank: int) -> int:
        return sum(self.sizes[:rank])

    @staticmethod
    def gather(z: torch.Tensor, min_rows: int, what: str, compute_grad: bool, group) -> "_BatchLayout":
        """All-gather every rank's (rows, d, dtype, needs-grad) and check that they fit together.

        Every rank sees the same table, so every rank raises the same error (no rank is left
        waiting in a later collective)."""
        world = dist.get_world_size(group)
        mine = torch.tensor(
            [z.shape[0], z.shape[1], FLOAT_DTYPES.index(z.dtype), int(compute_grad)],
            dtype=torch.int64,
            device=z.device,
        )
        table = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(table, mine, group=group)
        rows, widths, dtypes, grads = zip(*torch.stack(table).tolist())
        if len(set(widths)) > 1:
            raise ValueError(
                f"z must have the same number of columns d on every rank; got d={list(widths)} by rank"
            )
        if len(set(dtypes)) > 1:
            names = [str(FLOAT_DTYPES[i]).replace("torch.", "") for i in dtypes]
            raise TypeError(f"z must have the same dtype on every rank; got {names} by rank")
        if len(set(grads)) > 1:
            raise ValueError(
                "z must require grad (with grad mode on) on every rank or on none, since the "
                f"backward pass is collective; got requires-grad={[bool(g) for g in grads]} by rank"
            )
        if sum(rows) < min_rows:
            raise ValueError(f"the global batch has N={sum(rows)} rows (by rank: {list(rows)}) but {what}")
        return _BatchLayout(group=group, rank=dist.get_rank(group), sizes=tuple(rows))


# ---------------------------------------------------------------------------------------------
# The collectives
# ---------------------------------------------------------------------------------------------


def _all_gather_rows(z: torch.Tensor, layout: _BatchLayout) -> torch.Tensor:
    """(N, d): every rank's rows in rank order. Rows are padded to the largest count for the
    all-gather (it needs equal sizes) and the padding is dropped."""
    rows, width = layout.max_rows, z.shape[1]
    send = z.contiguous()
    if z.shape[0] < rows:
        send = torch.cat([send, send.new_zeros(rows - z.shape[0], width)])
    received = z.new_empty(layout.world_size, rows, width)
    dist.all_gather(list(received.unbind(0)), send, group=layout.group)
    if len(set(layout.sizes)) == 1:
        return received.view(layout.total, width)
    return torch.cat([received[r, :n] for r, n in enumerate(layout.sizes)])


def _use_reduce_scatter(group, device: torch.device) -> bool:
    """NCCL has a reduce-scatter (half the traffic of an all-reduce); gloo, before torch 2.6 or
    so, had none, so other backends use an all-reduce."""
    return device.type == "cuda" and "nccl" in str(dist.get_backend(group)).lower()


def _sum_gradients(grad_all: torch.Tensor, grad_h: torch.Tensor, layout: _BatchLayout) -> torch.Tensor:
    """(n_r, d) gradient of this rank's rows: (sum_s g_s) * sum_s dh_s/dz_r over ranks s.

    Rank s's buffer is dh_s/dZ cut into per-rank blocks, each padded to the largest count and
    followed by g_s; summing the buffers over ranks gives every block its rows' dH/dz and
    sum_s g_s in one collective."""
    world, rows, width = layout.world_size, layout.max_rows, grad_all.shape[1]
    buffer = grad_h.new_zeros(world, rows * width + 1)
    blocks = buffer[:, :-1].view(world, rows, width)
    for r, n in enumerate(layout.sizes):
        begin = layout.begin(r)
        blocks[r, :n] = grad_all[begin : begin + n]
    buffer[:, -1] = grad_h
    if _use_reduce_scatter(layout.group, buffer.device):
        mine = buffer.new_empty(rows * width + 1)
        dist.reduce_scatter(mine, list(buffer.unbind(0)), group=layout.group)
    else:
        dist.all_reduce(buffer, group=layout.group)
        mine = buffer[layout.rank]
    n = layout.sizes[layout.rank]
    return mine[-1] * mine[: n * width].view(n, width)


# ---------------------------------------------------------------------------------------------
# The autograd function
# ---------------------------------------------------------------------------------------------


class _GlobalEstimate(torch.autograd.Function):
    """z (this rank's rows) -> the value of the global batch; see the module docstring."""

    @staticmethod
    def forward(ctx, z, layout, partial, compute_grad):
        z_all = _all_gather_rows(z, layout)
        begin = layout.begin(layout.rank)
        end = begin + layout.sizes[layout.rank]
        h, grad_all = partial(z_all, begin, end, compute_grad)
        h = h.clone()
        dist.all_reduce(h, group=layout.group)
        if compute_grad:
            ctx.save_for_backward(grad_all)
            ctx.layout = layout
            ctx.z_dtype = z.dtype
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h):
        (grad_all,) = ctx.saved_tensors
        grad_z = _sum_gradients(grad_all, grad_h, ctx.layout).to(ctx.z_dtype)
        return grad_z, None, None, None
