"""Checkpoints: atomic writes, a previous copy to fall back on, and the random-number-generator
state needed to resume exactly.

A checkpoint is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over the previous one with ``os.replace`` (atomic on POSIX and Windows): a kill at any
moment leaves either the old or the new checkpoint, never a torn one. The one it replaces is kept
as ``checkpoint.prev.pt``, so that a checkpoint damaged later (a full disk, a bad copy, a
truncated transfer) costs one epoch, not the run: reading falls back to it with a one-line note.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"  # the checkpoint before the latest, kept as a fallback


@contextlib.contextmanager
def written_atomically(path: Path):
    """Yields a temporary path beside ``path``: what the block writes there is renamed over
    ``path`` when the block ends (``os.replace``, atomic on POSIX and Windows) and deleted if it
    raises, so ``path`` is always the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    path = Path(path)
    with written_atomically(path) as tmp:
        _write(tmp, obj)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators, stored as
    plain types and tensors so that ``torch.load(weights_only=True)`` can read them back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    """random.setstate wants nested tuples; a save/load round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(run_dir: str | os.PathLike, keep_previous: bool = True, **state: Any) -> Path:
    """Write ``state`` (model/optimiser/scheduler state dicts, counters, ...) plus the RNG states
    atomically to ``run_dir/checkpoint.pt``; returns the path.

    With ``keep_previous`` the checkpoint being replaced is kept as ``checkpoint.prev.pt``: the new
    one is written to a temporary file first, then the old one is hard-linked (or copied) to
    ``checkpoint.prev.pt`` and the new one renamed over ``checkpoint.pt``, each step atomic, so
    that at every moment ``checkpoint.pt`` is a complete file and a good earlier one exists.
    Pass ``keep_previous=False`` when ``checkpoint.pt`` is known to be unreadable (a resume that
    fell back to the previous checkpoint), so that the good previous one is not replaced by it.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    with written_atomically(path) as tmp:
        _write(tmp, {**state, "rng": rng_state()})
        if keep_previous and path.is_file():
            atomic_copy(path, path.with_name(PREVIOUS_NAME))
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a reader in another
    process sees the old file or the new one, never a part of either."""
    with written_atomically(Path(path)) as tmp:
        tmp.write_text(text)


def atomic_copy(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` (a hard link where the file system allows), replacing
    any earlier ``target`` atomically."""
    with written_atomically(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems): copy
            shutil.copyfile(source, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())


class CheckpointError(ValueError):
    """Neither the latest nor the previous checkpoint of a run can be read."""


def load_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The state of ``run_dir/checkpoint.pt`` (:func:`read_checkpoint`, which see)."""
    return read_checkpoint(run_dir, map_location)[0]


def read_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """(state, the file it came from) of the run in ``run_dir`` (tensors and plain Python types
    only: ``weights_only``).

    Reads ``checkpoint.pt``; when that file is missing, truncated or corrupt, says so in one line
    on stderr and reads ``checkpoint.prev.pt`` instead. Raises FileNotFoundError when the run has
    no checkpoint at all, :class:`CheckpointError` (a ValueError, one line naming both files) when
    none can be read.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    previous = path.with_name(PREVIOUS_NAME)
    if not path.is_file() and not previous.is_file():
        raise FileNotFoundError(f"no checkpoint in {Path(run_dir)}: expected {path} "
                                "(written by the trainer, eae-train or python -m python.train)")
    problem = _read(path, map_location)
    if isinstance(problem, dict):
        return problem, path
    state = _read(previous, map_location)
    if isinstance(state, dict):
        print(f"warning: {path} {problem}; using the previous checkpoint {previous} "
              f"(epoch {state.get('epoch')}, step {state.get('step')})", file=sys.stderr)
        return state, previous
    raise CheckpointError(f"cannot read a checkpoint: {path} {problem}, and {previous} {state}")


def _read(path: Path, map_location) -> dict | str:
    """The checkpoint in ``path``, or why it cannot be read (a short phrase)."""
    if not path.is_file():
        return "is missing"
    if path.stat().st_size == 0:
        return "is empty"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, pickle errors: all mean "unreadable"
        # only the exception's type: torch's messages run over several lines and give advice
        # (weights_only=False) that does not apply to a damaged file
        return f"is unreadable, truncated or corrupt (torch.load raised {type(exc).__name__})"
    if not isinstance(state, dict):
        return "is not a checkpoint of this package"
    return state


def _write(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
