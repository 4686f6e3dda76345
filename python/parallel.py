"""Data-parallel training under torchrun: the process group, each rank's share of a batch, and
the steps that only rank 0 takes.

    torchrun --standalone --nproc_per_node=4 -m python.train --dataset mnist --data-dir ~/data/mnist

torchrun starts one process (rank) per GPU or CPU worker and sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`session` then joins them in a process group: gloo for CPU tensors, and NCCL for CUDA
tensors when this torch has NCCL ("cpu:gloo,cuda:nccl"), so that small Python objects (the
config, the checkpoint) always travel over gloo and the training traffic over NCCL.

How python.train uses it:

- ``--batch-size B`` is per rank, as with a DistributedSampler: a step consumes a global batch of
  ``B * W`` images, the next slice of the epoch's shuffled order, and rank r takes the positions
  r, r + W, r + 2W, ... of it (:func:`rank_share`), exactly the split of
  ``DistributedSampler(shuffle=False, drop_last=True)`` over that order followed by batches of B.
- Every rank builds the same model (same seed), wrapped in DistributedDataParallel.
- Only rank 0 reads the run directory (config.json, checkpoint.pt) and sends what it read to the
  others (:func:`on_main`), so that machines need not share a file system; only rank 0 writes
  logs, checkpoints, grids and metrics, and prints.
- A Ctrl-C (torchrun forwards it to every worker) or a SIGTERM takes effect at the same step on
  every rank: each step's statistics and stop flag travel in one all-reduce.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Errors of rank 0's file work that every rank re-raises (the others then stay silent).
SHARED_ERRORS = (ValueError, TypeError, FileNotFoundError)


class ReportedByMainRank(Exception):
    """Raised on ranks > 0 when a step that rank 0 ran for everyone failed; rank 0 raises (and
    reports) the error itself."""


@dataclass(frozen=True)
class Parallel:
    """Where this process stands among the training processes.

    Attributes:
        rank: this process's rank in the default group (0 when alone).
        world_size: number of training processes.
        local_rank: rank on this machine (torchrun's LOCAL_RANK): the GPU it uses.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the WORLD_SIZE environment variable must be an int; got {value!r}") from None


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def session() -> Iterator[Parallel]:
    """This process's :class:`Parallel`.

    An already initialised default process group is used as it is (and left open). Otherwise,
    when torchrun launched several processes (WORLD_SIZE > 1), the group is created from its
    environment and destroyed on exit; a single process gets ``Parallel()`` and no group.
    """
    if dist.is_available() and dist.is_initialized():
        yield Parallel(dist.get_rank(), dist.get_world_size(), _local_rank())
        return
    if launched_world_size() <= 1:
        yield Parallel()
        return
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={launched_world_size()} but this build of torch has no torch.distributed")
    local_rank = _local_rank()
    if torch.cuda.is_available() and dist.is_nccl_available():
        if local_rank < torch.cuda.device_count():
            torch.cuda.set_device(local_rank)  # NCCL's communicators use the current device
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield Parallel(dist.get_rank(), dist.get_world_size(), local_rank)
    finally:
        dist.destroy_process_group()


def training_device(device: torch.device, par: Parallel) -> torch.device:
    """The device of this rank: ``device`` itself, except that CUDA means cuda:LOCAL_RANK when
    several processes train (one GPU per process)."""
    if not par.active or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"device={str(device)!r} would put every process on the same GPU: under torchrun use "
                         "--device cuda (or auto), which gives process LOCAL_RANK the GPU cuda:LOCAL_RANK")
    if par.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={par.local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                         "device(s): start at most one process per GPU (--nproc_per_node)")
    return torch.device("cuda", par.local_rank)


def on_main(fn: Callable[[], T], par: Parallel) -> T:
    """``fn()`` run on rank 0 only (file work); its result reaches every rank.

    If it raises one of ``SHARED_ERRORS``, rank 0 re-raises it and the other ranks raise
    :class:`ReportedByMainRank`, so that no rank is left waiting for the others.
    """
    if not par.active:
        return fn()
    outcome: list = [None]
    if par.is_main:
        try:
            outcome = [(True, fn())]
        except SHARED_ERRORS as exc:
            dist.broadcast_object_list([(False, str(exc))], src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    ok, value = outcome[0]
    if not ok:
        raise ReportedByMainRank(value)
    return value


def gather_objects(obj, par: Parallel) -> list | None:
    """Every rank's ``obj`` in rank order on every rank (None when training alone)."""
    if not par.active:
        return None
    gathered = [None] * par.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def rank_share(batch: torch.Tensor, par: Parallel) -> torch.Tensor:
    """This rank's part of a global batch of indices: positions rank, rank + W, ...
    (what a DistributedSampler gives each rank)."""
    return batch[par.rank::par.world_size] if par.active else batch


def mean_over_ranks(values: torch.Tensor, par: Parallel) -> torch.Tensor:
    """The mean over ranks of a tensor of per-rank values (the tensor itself when alone)."""
    if not par.active:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / par.world_size
