"""Train an entropic autoencoder: ``python -m python.train``.

    python -m python.train                       # digits bundled with scikit-learn, about a minute on 2 CPU cores
    python -m python.train --dataset mnist --data-dir ~/data/mnist --beta 0.05 --epochs 100
    python -m python.train --dataset celeba --data-dir ~/data/celeba/img_align_celeba --device cuda
    python -m python.train --resume runs/<name> [--epochs N]   # continue exactly where it stopped
    python -m python.train --beta 0                # the plain batch-norm autoencoder, for comparison
    python -m python.train --model vae             # a model of the paper's comparison (python/baselines.py)
    torchrun --standalone --nproc_per_node=4 -m python.train --dataset mnist --data-dir ~/data/mnist
                                                   # data-parallel: see python/parallel.py

Loss per batch: mean ||D(z) - x||^2 - beta * kl_entropy(z), z = BatchNorm1d(E(x)) (see
python/models.py); ``--model`` trains one of the models of the paper's comparison instead (AE,
RAE variants, VAE, CV-VAE, WAE-MMD, 2SVAE: python/baselines.py, and python -m python.compare).
Adam, ReduceLROnPlateau(factor 0.5, patience 5) on the epoch's training loss. Speed:
``--width`` (channels x W), ``--precision bf16`` (autocast; on a CPU also the matrix-product
weight gradient of python/conv_wgrad.py), ``--compile``, ``--threads``.

Each run directory (runs/<name>) gets config.json, checkpoint.pt (rewritten atomically after
every epoch and on Ctrl-C; the one before it kept as checkpoint.prev.pt, which --resume falls
back to when checkpoint.pt is damaged), log.csv (and TensorBoard events when tensorboard is
installed), and when training ends the PNG grids of python.sample and metrics.json of
python.evaluate. A progress bar shows on a terminal only; one summary line per epoch always.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import parallel
from .checkpoint import CHECKPOINT_NAME, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from .conv_wgrad import use_matmul_weight_grad
from .data import DATASETS, iterate_batches, load_dataset
from .parallel import Parallel
from .registry import MODELS, build_model
from .runs import (
    CONFIG_NAME,
    PRECISIONS,
    TrainConfig,
    autocast,
    check_precision,
    command,
    default_run_dir,
    load_run,
    read_config,
    resolve_device,
    write_config,
)

LOG_NAME = "log.csv"
LOG_FIELDS = ("epoch", "steps", "loss", "recon", "entropy", "heldout_recon", "lr", "seconds")
HELDOUT_LOG_LIMIT = 1000  # per-epoch held-out reconstruction error on at most this many images


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled image order of one epoch, a function of (seed, epoch) only, so that a resumed
    run (even one resumed mid-epoch) sees exactly the batches an uninterrupted run would."""
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed))


@torch.no_grad()
def heldout_recon(model, images, device, batch_size: int, limit: int = HELDOUT_LOG_LIMIT) -> float:
    """Mean per-image sum of squared errors on the first ``limit`` held-out images (eval mode)."""
    was_training = model.training
    model.eval()
    chunks = list(torch.arange(min(limit, len(images))).split(batch_size))
    total = 0.0
    for x in iterate_batches(images, chunks):
        x = x.to(device)
        total += (model.decode(model.encode(x)) - x).pow(2).flatten(1).sum(1).sum().item()
    model.train(was_training)
    return total / sum(len(c) for c in chunks)


class RunLog:
    """log.csv, one row per epoch (plus TensorBoard scalars when tensorboard is installed).

    On resume, rows after the checkpoint's epoch (written before a kill) are dropped, so that
    the log matches the resumed run."""

    def __init__(self, run_dir: Path, keep_epochs: int) -> None:
        self.path = run_dir / LOG_NAME
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_epochs]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
        if self.tensorboard is not None:
            for key in ("loss", "recon", "entropy", "heldout_recon", "lr"):
                self.tensorboard.add_scalar(key, row[key], row["epoch"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class StopOnInterrupt:
    """While active, the first Ctrl-C (SIGINT) only sets ``requested``: the training loop then
    finishes its step, saves a checkpoint and returns. A second Ctrl-C interrupts at once.

    Args:
        signals: the signals handled so (under torchrun also SIGTERM, which it forwards to its
            workers when it is itself terminated).
        announce: print what happens (rank 0 only under torchrun).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT,), announce: bool = True) -> None:
        self.requested = False
        self.signals = signals
        self.announce = announce
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to abort at once)", file=sys.stderr)

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def train_step(forward, optimizer: torch.optim.Optimizer, x: torch.Tensor, precision: str,
               channels_last: bool = True):
    """One optimisation step on the batch x (already on the model's device); returns the model's
    output. The forward runs under the autocast of ``precision`` (bf16: the convolutions; the
    codes, the entropy and the losses stay float32), the backward and the step outside it.
    ``channels_last``: the layout of the model (the trainer's) and so of x."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with autocast(precision, x.device):
        out = forward(x.contiguous(memory_format=layout))
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, resume: bool = False, progress: bool = True, finish: bool = True) -> Path:
    """Train (or, with ``resume``, continue training) the run described by ``config``.

    Under torchrun (or in a process that joined a torch.distributed group) every process calls
    this: the model is trained with DistributedDataParallel, each rank taking its share of every
    global batch of ``batch_size * world_size`` images (see :mod:`python.parallel`), and only
    rank 0 writes files.

    Args:
        config: a validated :class:`~python.runs.TrainConfig`; ``config.run_dir`` must be set.
        resume: continue from ``run_dir/checkpoint.pt`` (model, optimiser, scheduler, epoch, step
            within the epoch, RNG states), or from ``checkpoint.prev.pt`` when that one is
            damaged; otherwise ``run_dir`` must not hold a run yet.
        progress: show a tqdm progress bar (rank 0 only, and only when stderr is a terminal;
            the per-epoch summary lines are printed either way).
        finish: when all epochs are done, write the PNG grids and (if ``config.evaluate``)
            metrics.json (rank 0 only).

    Returns:
        The run directory.
    """
    config.validate()
    with parallel.session() as par:
        return _train(config, resume, progress, finish, par)


def _train(config: TrainConfig, resume: bool, progress: bool, finish: bool, par: Parallel) -> Path:
    from tqdm import tqdm

    run_dir = Path(config.run_dir)
    device = parallel.training_device(resolve_device(config.device), par)
    check_precision(config.precision, device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = load_dataset(config.dataset, config.data_dir)
    global_batch = config.batch_size * par.world_size
    steps_per_epoch = len(data.train) // global_batch  # the last partial batch is dropped
    if steps_per_epoch == 0:
        processes = f" x {par.world_size} processes" if par.active else ""
        raise ValueError(f"batch_size={config.batch_size}{processes} is larger than the {len(data.train)} "
                         "training images")

    _seed_everything(config.seed)
    # channels_last: faster convolutions on CPU (oneDNN): about 20% for the digits model, 1.4x for
    # the paper's transposed convolutions (benchmarks/train_speed.py)
    module = build_model(config.dataset, config.latent_dim, config.beta, config.k, config.model, config.width)
    module = module.to(device, memory_format=torch.channels_last)
    if config.precision == "bf16" and device.type == "cpu" and not config.compile:
        # oneDNN's bf16 weight-gradient kernels are the slowest part of a step on CPU: one matrix
        # product instead for the large layers (python/conv_wgrad.py; the same parameters and sums)
        use_matmul_weight_grad(module)
    module.distributed_entropy = par.active and config.global_entropy
    model = module
    if par.active:
        # the same weights on every rank (DDP also broadcasts rank 0's), distinct random streams
        _seed_everything(int(np.random.SeedSequence([config.seed, par.rank]).generate_state(1)[0]))
        if device.type == "cuda":  # SyncBatchNorm raises on CPU modules: there each rank normalises its own rows
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    # the compiled model shares module's parameters: checkpoints keep saving module.state_dict()
    forward = torch.compile(model) if config.compile else model
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=5)
    epoch, step, sums = 0, 0, [0.0, 0.0, 0.0]  # sums of loss, recon, entropy over this epoch's steps
    seconds_before = 0.0  # training time of the earlier invocations of this run
    latest_is_good = True  # checkpoint.pt may become checkpoint.prev.pt at the next save

    if resume:
        # rank 0 reads (machines need not share files); an unreadable checkpoint.pt falls back to
        # checkpoint.prev.pt, which the next save must then keep
        checkpoint, source = parallel.on_main(lambda: read_checkpoint(run_dir), par)
        latest_is_good = source.name == CHECKPOINT_NAME
        trained_by = int(checkpoint.get("world_size", 1))
        if trained_by != par.world_size:
            raise ValueError(f"{run_dir} was trained by {trained_by} process(es) and this is {par.world_size}: "
                             f"resume it with the same number (torchrun --nproc_per_node x --nnodes = {trained_by}), "
                             "since the global batch is batch_size x processes")
        module.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        epoch, step, sums = int(checkpoint["epoch"]), int(checkpoint["step"]), list(checkpoint["sums"])
        seconds_before = float(checkpoint.get("seconds", 0.0))  # absent from checkpoints of older versions
        set_rng_state(checkpoint["rank_rng"][par.rank] if par.active else checkpoint["rng"])
    else:
        def check_new_run_dir() -> None:
            if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / CONFIG_NAME).exists():
                raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                                 "or choose another --name / --run-dir")
            run_dir.mkdir(parents=True, exist_ok=True)

        parallel.on_main(check_new_run_dir, par)
    parallel.on_main(lambda: write_config(config, run_dir), par)

    def checkpoint_now() -> None:
        nonlocal latest_is_good
        every_rng = parallel.gather_objects(rng_state(), par)  # a collective: every rank takes part
        if par.is_main:
            extra = {"rank_rng": every_rng} if par.active else {}
            save_checkpoint(run_dir, keep_previous=latest_is_good, model=module.state_dict(),
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch,
                            step=step, sums=sums, world_size=par.world_size,
                            seconds=round(time.time() - started, 1), **extra)
        latest_is_good = True

    log = RunLog(run_dir, keep_epochs=epoch) if par.is_main else None
    say = functools.partial(print, flush=True) if par.is_main else _silent  # a log file gets each line at once
    processes = (f"  {par.world_size} processes, global batch {global_batch}, entropy over the "
                 f"{'global' if module.distributed_entropy else 'per-rank'} batch") if par.active else ""
    say(f"{data.description}\nrun directory: {run_dir}  device: {device}  "
        f"{sum(p.numel() for p in module.parameters()):,} parameters (width {config.width:g})  "
        f"precision {config.precision}{'  compiled' if config.compile else ''}{processes}")
    started = time.time() - seconds_before  # log.csv's seconds: the run's training time over every invocation
    stop_signals = (signal.SIGINT, signal.SIGTERM) if par.active else (signal.SIGINT,)
    try:
        with StopOnInterrupt(stop_signals, announce=par.is_main) as stop:
            while epoch < config.epochs and not stop.requested:
                order = epoch_order(config.seed, epoch, len(data.train))
                batches = [parallel.rank_share(order[i * global_batch:(i + 1) * global_batch], par)
                           for i in range(step, steps_per_epoch)]
                model.train()
                # disable=None: a bar only when stderr is a terminal, never in a log file or CI
                bar = tqdm(total=steps_per_epoch, initial=step, desc=f"epoch {epoch + 1}/{config.epochs}",
                           disable=None if progress and par.is_main else True, leave=False, dynamic_ncols=True)
                for x in iterate_batches(data.train, batches):
                    out = train_step(forward, optimizer, x.to(device, non_blocking=True), config.precision)
                    values = _step_values(out, stop, par)
                    sums = [s + v for s, v in zip(sums, values)]
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{values[0]:.3f}", recon=f"{values[1]:.3f}", entropy=f"{values[2]:.3f}")
                    if stop.requested:
                        break
                bar.close()
                if step < steps_per_epoch:  # interrupted mid-epoch
                    break
                means = [s / steps_per_epoch for s in sums]
                if not all(math.isfinite(v) for v in means):
                    raise FloatingPointError(f"the training loss diverged in epoch {epoch + 1}: {means}; "
                                             "try a smaller --lr or --beta")
                row = {"epoch": epoch + 1, "steps": (epoch + 1) * steps_per_epoch, "loss": means[0],
                       "recon": means[1], "entropy": means[2],
                       "heldout_recon": heldout_recon(module, data.test, device, config.batch_size)
                       if par.is_main else math.nan,
                       "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 1)}
                scheduler.step(means[0])
                epoch, step, sums = epoch + 1, 0, [0.0, 0.0, 0.0]
                checkpoint_now()
                if log is not None:
                    log.write(row)
                say(f"epoch {row['epoch']}/{config.epochs}  loss {row['loss']:.4f}  recon {row['recon']:.4f}  "
                    f"entropy {row['entropy']:.4f}  held-out recon {row['heldout_recon']:.4f}  lr {row['lr']:.2g}")
            if stop.requested:
                if step > 0:  # mid-epoch (at an epoch's end the checkpoint is already written)
                    checkpoint_now()
                launcher = f"torchrun ... -m {__package__}.train" if par.active else command("train")
                say(f"stopped at epoch {epoch} step {step}; checkpoint saved. Continue with:\n"
                    f"    {launcher} --resume {run_dir}")
                return run_dir
    finally:
        if log is not None:
            log.close()

    if module.second_stage_pending(epoch):
        # a second training stage (the 2SVAE's VAE on the codes); repeatable (own generator), so a
        # Ctrl-C here restarts it on --resume
        losses = module.fit_second_stage(data.train, device, config.epochs, config.batch_size, config.lr,
                                         config.seed, epoch)
        checkpoint_now()
        say(f"second stage: {len(losses)} epochs on the codes, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if finish and par.is_main:
        finish_run(run_dir, data, config.evaluate)
    return run_dir


def _silent(*args, **kwargs) -> None:
    """print() of the ranks other than 0."""


def _step_values(out, stop: StopOnInterrupt, par: Parallel) -> tuple[float, float, float]:
    """(loss, recon, entropy) of a step. Under torchrun: their means over the ranks (the values
    of the global batch), in one all-reduce that also tells every rank whether any of them was
    asked to stop, so that all stop after the same step."""
    if not par.active:
        return out.loss.item(), out.recon_loss.item(), out.entropy.item()
    stop_flag = torch.tensor(float(stop.requested), device=out.loss.device)
    stats = torch.stack([out.loss.detach(), out.recon_loss.detach(), out.entropy.detach(), stop_flag]).double()
    loss, recon, entropy, stop_any = parallel.mean_over_ranks(stats, par).tolist()
    stop.requested = stop.requested or stop_any > 0
    return loss, recon, entropy


def finish_run(run_dir: Path, data, evaluate: bool) -> None:
    """Write the PNG grids and, if ``evaluate``, metrics.json of a trained run."""
    from .sample import write_grids

    run = load_run(run_dir, read_config(run_dir).device)
    for path in write_grids(run, data):
        print(f"wrote {path}")
    if evaluate:
        from .evaluate import evaluate_run, summary

        metrics = evaluate_run(run, data)
        print(summary(metrics))
        print(f"wrote {run_dir / 'metrics.json'}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

# Options that may differ from config.json when resuming; any other one is refused.
RESUME_OVERRIDABLE = ("epochs", "device", "evaluate", "threads", "compile")


def build_parser() -> argparse.ArgumentParser:
    """Every option defaults to None, so that the options given explicitly can be told apart."""
    p = argparse.ArgumentParser(prog=command("train"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, help="data set (default digits, bundled with scikit-learn)")
    p.add_argument("--data-dir", dest="data_dir", help="folder with the data set's files (mnist, cifar10, celeba)")
    p.add_argument("--model", choices=MODELS,
                   help="eae (default) or a model of the paper's comparison, with the loss weights of its paper "
                        "(python/baselines.py)")
    p.add_argument("--beta", type=float,
                   help="weight of the EAE's entropy term; 0 = plain batch-norm AE (default 0.05)")
    p.add_argument("--epochs", type=int, help="training epochs (default: digits 40, mnist/cifar10 100, celeba 70)")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="images per step (default 100); under torchrun per process: the global batch is "
                        "batch size x processes")
    p.add_argument("--lr", type=float,
                   help="Adam learning rate (default: digits 2e-3, mnist/cifar10 5e-4, celeba 1e-3)")
    p.add_argument("--seed", type=int, help="seed of the weights and the data order (default 0)")
    p.add_argument("--device", help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--latent-dim", dest="latent_dim", type=int,
                   help="code size (default: digits 8, mnist 16, cifar10 128, celeba 64)")
    p.add_argument("--k", type=int, help="neighbour order of the entropy estimator (default 1)")
    p.add_argument("--width", type=float,
                   help="multiplies every convolution's channel count (default 1.0, the paper's; 0.25 gives "
                        "32-64-128-256 for mnist, a CPU-sized network)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="fp32 (default) or bf16: convolutions under bfloat16 autocast, codes and losses in "
                        "float32; needs a CPU with AVX512_BF16/AMX or a CUDA GPU with bf16")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train through torch.compile (default off; a one-off compilation of minutes on CPU)")
    p.add_argument("--global-entropy", dest="global_entropy", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun: estimate the entropy over the global batch, the codes of every "
                        "process (default on); --no-global-entropy: over each process's own batch")
    p.add_argument("--name",
                   help="run name: the run directory is runs/<name> (default <dataset>-beta<b>-seed<s>-<time>, "
                        "other models <dataset>-<model>-seed<s>-<time>)")
    p.add_argument("--run-dir", dest="run_dir", help="run directory (overrides --name)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 for digits, else torch's default)")
    p.add_argument("--eval", dest="evaluate", action=argparse.BooleanOptionalAction, default=None,
                   help="write metrics.json when training ends (default on)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """(config, resume) from parsed arguments; raises ValueError for invalid combinations."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "progress", "name")}
    if args.resume is not None:
        if args.name is not None or args.run_dir is not None:
            raise ValueError("--resume RUN_DIR names the run: do not combine it with --name or --run-dir")
        config = read_config(args.resume)
        for key, value in given.items():
            if key in RESUME_OVERRIDABLE:
                setattr(config, key, value)
            elif value != getattr(config, key):
                raise ValueError(f"--{key.replace('_', '-')} cannot change when resuming: {args.resume} was "
                                 f"trained with {key}={getattr(config, key)!r} "
                                 "(only --epochs, --device, --threads, --eval and --compile may change)")
        config.run_dir = str(args.resume)
        config.validate()
        return config, True
    run_dir = given.pop("run_dir", None)
    config = TrainConfig.for_dataset(given.pop("dataset", "digits"), **given)
    config.run_dir = str(run_dir if run_dir is not None else default_run_dir(config, args.name))
    return config, False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    par = Parallel()
    try:
        with parallel.session() as par:
            # rank 0 reads config.json (resume) and names the run directory; the others get its result
            config, resume = parallel.on_main(lambda: config_from_args(args), par)
            train(config, resume=resume, progress=args.progress)
    except parallel.ReportedByMainRank:  # rank 0 printed the error
        return 2
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as exc:  # DataError is a ValueError
        where = f"rank {par.rank}: " if par.active else ""
        print(f"{where}error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the training loop (loading data, writing grids or metrics)
        print(f"\ninterrupted; the last checkpoint is intact (grids: {command('sample')}, "
              f"metrics: {command('evaluate')})", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
