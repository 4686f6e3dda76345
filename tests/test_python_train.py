"""Training, checkpoints, resume, Ctrl-C, sampling and evaluation of the model package.

Runs are tiny: generated data sets of a dozen images, 1-2 training steps, or the bundled digits
with large batches; one CPU thread. The per-format smoke runs use narrow versions of the paper
architectures (same image sizes, kernels and layer counts, 1/16 of the channels): the full-width
networks are checked in tests/test_python_models.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import python.train as train_module
from python import checkpoint
from python.evaluate import evaluate_run
from python.evaluate import main as evaluate_main
from python.data import load_dataset
from python.runs import TrainConfig, load_run
from python.sample import main as sample_main
from python.sample import write_grids
from python.train import config_from_args, build_parser, main as train_main, train

from conftest import assert_same_state, narrow, state_of, tiny_config, write_cifar, write_image_folder, write_mnist


@pytest.fixture(autouse=True)
def _restore_threads():
    """train() sets torch's thread count from the config: do not leak it into other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Smoke runs, one per data set format: 2 training steps
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "celeba"])
def test_two_step_smoke_run(tmp_path, dataset, monkeypatch):
    narrow(dataset, monkeypatch)
    data_dir = tmp_path / "data"
    if dataset == "mnist":
        write_mnist(data_dir, n=11)  # 10 training images: 2 steps of 5
        batch_size = 5
    elif dataset == "cifar10":
        write_cifar(data_dir, n=11)
        batch_size = 5
    else:
        write_image_folder(data_dir, n=5)  # 4 training images: 2 steps of 2
        batch_size = 2
    config = tiny_config(tmp_path, dataset, data_dir, batch_size=batch_size)
    torch.manual_seed(config.seed)  # as train() does: the initial weights
    initial = train_module.build_model(dataset, config.latent_dim).state_dict()
    run_dir = train(config, progress=False, finish=False)
    state = state_of(run_dir)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(v["step"].item() == 2 for v in state["optimizer"]["state"].values())  # 2 Adam steps
    assert not torch.equal(state["model"]["encoder.to_latent.weight"], initial["encoder.to_latent.weight"])
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,steps,loss,recon,entropy") and len(rows) == 2
    assert json.loads((run_dir / "config.json").read_text())["dataset"] == dataset


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One epoch of the default data set with large batches (4 steps), shared by several tests."""
    config = tiny_config(tmp_path_factory.mktemp("digits"), "digits", batch_size=400, latent_dim=8)
    return train(config, progress=False, finish=False)


@pytest.mark.slow
def test_digits_run_writes_grids_and_metrics(digits_run):
    """The full path of the default data set: train, grids, metrics."""
    run, data = load_run(digits_run, "cpu"), load_dataset("digits")
    paths = write_grids(run, data, n=16)
    assert sorted(p.name for p in paths) == ["interpolations.png", "reconstructions.png",
                                             "samples_gmm.png", "samples_isotropic.png"]
    metrics = evaluate_run(run, data, n_samples=200)
    saved = json.loads((digits_run / "metrics.json").read_text())
    assert saved["reconstruction"] == metrics["reconstruction"] and saved["heldout_images"] == 180
    assert len(saved["latent"]["mean"]) == 8 and saved["latent"]["n"] == 1617
    fd = saved["classifier_frechet_distance"]
    assert {"isotropic", "gmm", "reconstructions", "train_vs_heldout"} <= fd.keys()
    assert all(fd[k] >= 0 for k in ("isotropic", "gmm", "reconstructions", "train_vs_heldout"))
    assert "skipped" in saved["fid"]
    assert (digits_run / "classifier.pt").is_file() and (digits_run / "gmm.pt").is_file()
    # the cached classifier and GMM are reused: same numbers again
    again = evaluate_run(run, data, n_samples=200, write=False)
    assert again["classifier_frechet_distance"] == fd


# ---------------------------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def digits_config(tmp_path, name, epochs):
    config = tiny_config(tmp_path, "digits", batch_size=500, latent_dim=8, epochs=epochs)  # 3 steps per epoch
    config.run_dir = str(tmp_path / name)
    return config


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, deterministic, monkeypatch):
    narrow("digits", monkeypatch)
    straight = train(digits_config(tmp_path, "straight", 2), progress=False, finish=False)
    split = train(digits_config(tmp_path, "split", 1), progress=False, finish=False)
    assert state_of(split)["epoch"] == 1
    args = build_parser().parse_args(["--resume", str(split), "--epochs", "2"])
    config, resume = config_from_args(args)
    assert resume and config.epochs == 2
    train(config, resume=True, progress=False, finish=False)
    assert_same_state(state_of(straight), state_of(split))
    rows = (split / "log.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs
    # the seconds column is the run's training time over both invocations: it goes on, not back to 0
    first, second = (float(row.split(",")[-1]) for row in rows[1:])
    assert 0 < first <= second and state_of(split)["seconds"] >= second


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(tmp_path, deterministic, monkeypatch):
    narrow("digits", monkeypatch)
    straight = train(digits_config(tmp_path, "straight", 2), progress=False, finish=False)

    real_iterate = train_module.iterate_batches
    training_loops = []

    def interrupting(images, batches):
        if len(batches) == 3:  # an epoch's training loop (the held-out check is 1 batch)
            training_loops.append(1)
        for i, x in enumerate(real_iterate(images, batches)):
            if len(training_loops) == 2 and i == 1:  # epoch 2, step 2 of 3: as if Ctrl-C was pressed
                os.kill(os.getpid(), signal.SIGINT)
            yield x

    monkeypatch.setattr(train_module, "iterate_batches", interrupting)
    run_dir = train(digits_config(tmp_path, "interrupted", 2), progress=False, finish=False)
    saved = state_of(run_dir)
    assert (saved["epoch"], saved["step"]) == (1, 2)  # the step in progress was finished, then saved
    monkeypatch.setattr(train_module, "iterate_batches", real_iterate)
    config, _ = config_from_args(build_parser().parse_args(["--resume", str(run_dir)]))
    train(config, resume=True, progress=False, finish=False)
    assert_same_state(state_of(straight), state_of(run_dir))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(tmp_path, model={"w": torch.ones(3)}, epoch=1)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, model={"w": torch.zeros(3)}, epoch=2)
    monkeypatch.setattr(torch, "save", real_save)
    kept = checkpoint.load_checkpoint(tmp_path)
    assert kept["epoch"] == 1 and torch.equal(kept["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.CHECKPOINT_NAME]  # no temp file left


def test_each_save_keeps_the_previous_checkpoint(tmp_path):
    checkpoint.save_checkpoint(tmp_path, model={"w": torch.ones(1)}, epoch=1)
    assert not (tmp_path / checkpoint.PREVIOUS_NAME).exists()
    checkpoint.save_checkpoint(tmp_path, model={"w": torch.ones(1)}, epoch=2)
    checkpoint.save_checkpoint(tmp_path, model={"w": torch.ones(1)}, epoch=3)
    assert checkpoint.load_checkpoint(tmp_path)["epoch"] == 3
    assert torch.load(tmp_path / checkpoint.PREVIOUS_NAME, weights_only=True)["epoch"] == 2
    checkpoint.save_checkpoint(tmp_path, keep_previous=False, model={"w": torch.ones(1)}, epoch=4)
    assert torch.load(tmp_path / checkpoint.PREVIOUS_NAME, weights_only=True)["epoch"] == 2  # kept
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([checkpoint.CHECKPOINT_NAME, checkpoint.PREVIOUS_NAME])


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[how])


DAMAGE = ("truncated", "garbage", "empty")


def test_resume_from_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, deterministic, monkeypatch,
                                                                          capsys):
    narrow("digits", monkeypatch)
    straight = train(digits_config(tmp_path, "straight", 2), progress=False, finish=False)
    assert torch.load(straight / checkpoint.PREVIOUS_NAME, weights_only=True)["epoch"] == 1
    for how in DAMAGE:
        run_dir = tmp_path / how
        shutil.copytree(straight, run_dir)
        _damage(run_dir / checkpoint.CHECKPOINT_NAME, how)
        capsys.readouterr()
        config, resume = config_from_args(build_parser().parse_args(["--resume", str(run_dir)]))
        train(config, resume=resume, progress=False, finish=False)
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if "checkpoint" in line]
        assert len(notes) == 1, err  # one line, naming the damaged file and the one used
        assert notes[0].startswith(f"warning: {run_dir / checkpoint.CHECKPOINT_NAME} is "
                                   + {"truncated": "unreadable", "garbage": "unreadable", "empty": "empty"}[how])
        assert f"using the previous checkpoint {run_dir / checkpoint.PREVIOUS_NAME} (epoch 1, step 0)" in notes[0]
        # epoch 2 was trained again from epoch 1, exactly; the previous checkpoint (epoch 1) was not
        # replaced by the damaged file
        assert_same_state(state_of(straight), state_of(run_dir))
        assert torch.load(run_dir / checkpoint.PREVIOUS_NAME, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("how", DAMAGE)
def test_resume_when_no_checkpoint_can_be_read_names_both_files(tmp_path, how, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(tiny_config(tmp_path, "digits").to_json())
    for epoch in (1, 2):
        checkpoint.save_checkpoint(run_dir, model={"w": torch.ones(1)}, epoch=epoch)
    for name in (checkpoint.CHECKPOINT_NAME, checkpoint.PREVIOUS_NAME):
        _damage(run_dir / name, how)
    assert train_main(["--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: cannot read a checkpoint: {run_dir / checkpoint.CHECKPOINT_NAME} is ")
    assert f", and {run_dir / checkpoint.PREVIOUS_NAME} is " in err


def test_missing_checkpoint_and_no_previous_one(tmp_path):
    checkpoint.save_checkpoint(tmp_path, model={"w": torch.ones(1)}, epoch=1)
    _damage(tmp_path / checkpoint.CHECKPOINT_NAME, "truncated")
    with pytest.raises(checkpoint.CheckpointError, match=f"{checkpoint.PREVIOUS_NAME} is missing"):
        checkpoint.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoint.load_checkpoint(tmp_path / "nothing")


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    checkpoint.save_checkpoint(tmp_path, epoch=0)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    checkpoint.set_rng_state(checkpoint.load_checkpoint(tmp_path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


# ---------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------


def test_train_cli_errors(tmp_path, capsys):
    missing = ["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path / "r")]
    assert train_main(missing) == 2
    assert "does not exist" in capsys.readouterr().err
    assert train_main(["--beta", "-1", "--run-dir", str(tmp_path / "r")]) == 2
    assert "beta must be a finite number >= 0" in capsys.readouterr().err
    assert train_main(["--resume", str(tmp_path / "nothing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_resume_refuses_changed_settings(digits_run):
    with pytest.raises(ValueError, match="--beta cannot change when resuming"):
        config_from_args(build_parser().parse_args(["--resume", str(digits_run), "--beta", "0.5"]))
    with pytest.raises(ValueError, match="do not combine it with --name"):
        config_from_args(build_parser().parse_args(["--resume", str(digits_run), "--name", "x"]))
    config, _ = config_from_args(build_parser().parse_args(["--resume", str(digits_run), "--threads", "1"]))
    assert config.threads == 1
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, progress=False, finish=False)


def test_sample_and_evaluate_cli(digits_run, tmp_path, capsys):
    out = tmp_path / "gmm.png"
    assert sample_main(["--run", str(digits_run), "--n", "4", "--prior", "gmm", "--out", str(out)]) == 0
    assert out.is_file()
    assert sample_main(["--run", str(tmp_path / "missing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert evaluate_main(["--run", str(digits_run), "--n-samples", "8"]) == 0
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["classifier_frechet_distance"]["n_samples"] == 8 and "skipped" in metrics["fid"]


def test_progress_bar_only_on_a_terminal_and_epoch_lines_always(tmp_path, monkeypatch, capsys):
    """stderr captured (not a terminal, like a log file or CI): no bar even with progress=True,
    and one summary line per epoch on stdout."""
    narrow("mnist", monkeypatch)
    write_mnist(tmp_path / "data", n=11)
    train(tiny_config(tmp_path, "mnist", tmp_path / "data", epochs=2), progress=True, finish=False)
    out, err = capsys.readouterr()
    assert "it/s" not in err and "\r" not in err and "epoch 1/2:" not in err
    assert [line.split("  ")[0] for line in out.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]


def test_tensorboard_scalars_when_installed(tmp_path, monkeypatch):
    """With tensorboard importable, every epoch's log row also goes to a SummaryWriter."""
    import sys
    import types

    written = []

    class SummaryWriter:
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, key, value, step):
            written.append((key, step))

        def flush(self):
            pass

        def close(self):
            written.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    narrow("mnist", monkeypatch)
    write_mnist(tmp_path / "data", n=11)
    train(tiny_config(tmp_path, "mnist", tmp_path / "data", epochs=2), progress=False, finish=False)
    assert written[0] == ("dir", str(tmp_path / "run" / "tensorboard")) and written[-1] == ("closed", None)
    assert ("loss", 2) in written and ("heldout_recon", 1) in written and ("entropy", 2) in written
