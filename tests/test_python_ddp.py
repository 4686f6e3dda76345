"""Data-parallel training of the model package (python/parallel.py, python/train.py) on CPU.

- The per-rank split of a global batch is the DistributedSampler's.
- torchrun: a 2-process, 2-step run of ``python -m python.train`` exits 0 and rank 0 alone writes
  one checkpoint, one log and the grids.
- Two processes spawned by the test (gloo) run the CLI's main() in-process: a Ctrl-C that only
  rank 1 receives stops both ranks after the same step; resuming that run gives exactly the
  weights of an uninterrupted run; resuming a run with another number of processes is refused
  on every rank.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from python.parallel import Parallel, rank_share, training_device

from conftest import assert_same_state, narrow, state_of, tiny_config

REPO = Path(__file__).resolve().parents[1]
WORLD = 2



def test_rank_share_is_the_distributed_sampler_split():
    """Global batch s (the next B * W images of the epoch order) split by rank_share gives rank r
    the batch s of DistributedSampler(order, shuffle=False, drop_last=True) batched by B."""
    from torch.utils.data import DistributedSampler

    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    batch, world = 4, 3
    steps = len(order) // (batch * world)
    for rank in range(world):
        sampler = DistributedSampler(order.tolist(), num_replicas=world, rank=rank, shuffle=False, drop_last=True)
        positions = list(sampler)
        par = Parallel(rank=rank, world_size=world)
        for s in range(steps):
            mine = rank_share(order[s * batch * world:(s + 1) * batch * world], par)
            assert mine.tolist() == order[positions[s * batch:(s + 1) * batch]].tolist()
    assert torch.equal(rank_share(order, Parallel()), order)


def test_training_device_gives_each_process_its_gpu():
    two = Parallel(rank=1, world_size=2, local_rank=1)
    assert training_device(torch.device("cpu"), two) == torch.device("cpu")
    assert training_device(torch.device("cuda", 3), Parallel()) == torch.device("cuda", 3)  # alone: as asked
    with pytest.raises(ValueError, match="would put every process on the same GPU: under torchrun use --device cuda"):
        training_device(torch.device("cuda", 0), two)
    if torch.cuda.device_count() >= 2:
        assert training_device(torch.device("cuda"), two) == torch.device("cuda", 1)
    elif not torch.cuda.is_available():
        with pytest.raises(ValueError, match="LOCAL_RANK=1 but this machine has 0 CUDA device"):
            training_device(torch.device("cuda"), two)


# ---------------------------------------------------------------------------------------------
# torchrun, as a user runs it
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_torchrun_two_step_smoke_run(tmp_path):
    run_dir = tmp_path / "run"
    # digits: 1617 training images, 2 processes x 400 = 800 per step: 2 steps
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", "python.train", "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "400",
               "--no-eval", "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("run directory:") == 1  # only rank 0 prints
    assert "2 processes, global batch 800, entropy over the global batch" in done.stdout
    state = state_of(run_dir)
    assert (state["epoch"], state["step"], state["world_size"]) == (1, 0, WORLD)
    assert all(v["step"].item() == 2 for v in state["optimizer"]["state"].values())  # 2 Adam steps
    assert len(state["rank_rng"]) == WORLD
    assert len((run_dir / "log.csv").read_text().splitlines()) == 2  # header + 1 epoch, written once
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("tensorboard")) == [
        "checkpoint.pt", "config.json", "gmm.pt", "interpolations.png", "log.csv", "reconstructions.png",
        "samples_gmm.png", "samples_isotropic.png"]


# ---------------------------------------------------------------------------------------------
# Two spawned processes calling the CLI's main() in-process
# ---------------------------------------------------------------------------------------------


def _cli(run_dir: Path, epochs: int = 2) -> list[str]:
    # narrow digits model, 250 images per rank: 1617 // 500 = 3 steps per epoch
    return ["--run-dir", str(run_dir), "--epochs", str(epochs), "--batch-size", "250", "--latent-dim", "4",
            "--threads", "1", "--no-eval", "--no-progress"]


def _worker(rank: int, tmp: str, single_run: str) -> None:
    import python.train as train_module
    from python.models import ARCHITECTURES

    torch.use_deterministic_algorithms(True)
    arch = ARCHITECTURES["digits"]
    ARCHITECTURES["digits"] = dataclasses.replace(
        arch, encoder_channels=tuple(c // 16 for c in arch.encoder_channels),
        decoder_channels=tuple(c // 16 for c in arch.decoder_channels),
        decoder_base_channels=arch.decoder_base_channels // 16)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    tmp = Path(tmp)
    codes = {"straight": train_module.main(_cli(tmp / "straight"))}

    real_iterate = train_module.iterate_batches
    loops = []

    def interrupting(images, batches):
        if len(batches) == 3:  # an epoch's training loop
            loops.append(1)
        for i, x in enumerate(real_iterate(images, batches)):
            if rank == 1 and len(loops) == 2 and i == 1:  # rank 1 only, epoch 2, step 2 of 3
                os.kill(os.getpid(), signal.SIGINT)
            yield x

    train_module.iterate_batches = interrupting
    codes["interrupted"] = train_module.main(_cli(tmp / "interrupted"))
    train_module.iterate_batches = real_iterate
    if rank == 0:
        shutil.copy(tmp / "interrupted" / "checkpoint.pt", tmp / "interrupted.pt")
    dist.barrier()
    codes["resumed"] = train_module.main(["--resume", str(tmp / "interrupted"), "--no-eval", "--no-progress"])
    codes["other_world_size"] = train_module.main(["--resume", single_run, "--no-progress"])
    torch.save(codes, tmp / f"codes{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Runs the workers once; returns (their directory, each rank's return codes)."""
    tmp = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as monkeypatch:  # a single-process run, for the refused resume
        narrow("digits", monkeypatch)
        from python.train import train

        single = train(tiny_config(tmp, "digits", batch_size=500), progress=False, finish=False)
    mp.spawn(_worker, args=(str(tmp), str(single)), nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"codes{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.subprocess
def test_interrupt_on_one_rank_stops_every_rank_at_the_same_step(spawned):
    tmp, codes = spawned
    assert all(c["interrupted"] == 0 for c in codes)
    saved = torch.load(tmp / "interrupted.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)  # the step in progress was finished, then saved
    assert len(saved["rank_rng"]) == WORLD


@pytest.mark.slow
@pytest.mark.subprocess
def test_resume_under_ddp_gives_the_weights_of_an_uninterrupted_run(spawned):
    tmp, codes = spawned
    assert all(c["straight"] == 0 and c["resumed"] == 0 for c in codes)
    assert_same_state(state_of(tmp / "straight"), state_of(tmp / "interrupted"))
    log = (tmp / "interrupted" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 epochs: one writer


@pytest.mark.slow
@pytest.mark.subprocess
def test_resume_with_another_number_of_processes_is_refused_on_every_rank(spawned):
    _, codes = spawned
    assert [c["other_world_size"] for c in codes] == [2, 2]
