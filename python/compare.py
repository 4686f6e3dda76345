"""The paper's comparison (its Table 1) on your data: ``python -m python.compare``.

    python -m python.compare --dataset digits                  # every model, the digits budget (6.5 min, 1 core)
    python -m python.compare --dataset mnist --data-dir ~/data/mnist --device cuda
    python -m python.compare --models eae,vae,rae-l2 --epochs 5 --out runs/quick

Each model (``--model`` of python.train; python/baselines.py) is trained with the same budget:
the data set's defaults of python.train (epochs, batch size, learning rate, latent size) and the
same seed, so the same initial encoder/decoder weights and the same batches. The EAE keeps its
beta; the others use the loss weights of their papers. Each is then evaluated with
python.evaluate. Written into ``--out`` (default runs/compare-<dataset>):

    table.md, table.json  per model: held-out reconstruction error, Fréchet distances of
                          reconstructions, N(0, I) samples and GMM samples to the held-out
                          images, KL of the codes to N(0, I), training time
    samples.png           a row of N(0, I) samples and GMM samples per model
    <model>/              each model's run directory: a rerun reuses finished runs and resumes
                          unfinished ones (e.g. after Ctrl-C, or with more --epochs)

The Fréchet distances are measured in the feature space of python.evaluate's small in-project
classifier (one classifier, trained once, for every model), not Inception: compare them with each
other, not with published FIDs (``--inception-weights`` adds Inception FIDs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write_text
from .data import DATASETS, load_dataset
from .evaluate import DEFAULT_SAMPLES, evaluate_run
from .images import display_scale, save_labelled_rows
from .metrics import cached_classifier
from .registry import MODELS
from .runs import DEFAULT_RUNS_DIR, TrainConfig, command, load_run, read_config, resolve_device
from .sample import sample_images
from .train import RESUME_OVERRIDABLE, train

TABLE_NAME, SAMPLES_NAME, CLASSIFIER_NAME = "table", "samples.png", "classifier.pt"
TIME_NAME = "compare_time.json"  # in each run directory: seconds spent training it, over every invocation
SAMPLES_PER_PRIOR = 8
COLUMNS = (  # (key in a row, Markdown header, format)
    ("recon_sse", "recon. SSE / image", "{:.2f}"),
    ("fd_reconstructions", "FD rec.", "{:.2f}"),
    ("fd_isotropic", "FD N(0, I)", "{:.2f}"),
    ("fd_gmm", "FD GMM", "{:.2f}"),
    ("fid_reconstructions", "FID rec.", "{:.2f}"),
    ("fid_isotropic", "FID N(0, I)", "{:.2f}"),
    ("fid_gmm", "FID GMM", "{:.2f}"),
    ("latent_kl", "KL(codes, N(0, I))", "{:.2f}"),
    ("train_seconds", "train s", "{:.0f}"),
)


def model_config(dataset: str, model: str, out: Path, **options) -> tuple[TrainConfig, bool]:
    """(config, resume) of ``model``'s run in ``out/<model>``; an existing run there is resumed
    when it was trained with the same settings (up to epochs, device, threads), else refused."""
    config = TrainConfig.for_dataset(dataset, model=model, evaluate=False, **options)
    config.run_dir = str(out / model)
    if not (out / model / "config.json").is_file():
        return config, False
    existing = read_config(out / model)
    for key, value in vars(config).items():
        if key not in RESUME_OVERRIDABLE and key != "run_dir" and getattr(existing, key) != value:
            raise ValueError(f"{out / model} holds a run trained with {key}={getattr(existing, key)!r}, not "
                             f"{value!r}: choose another --out, or remove that folder")
    return config, True


def _finished(run) -> bool:
    """Whether a loaded run has done every epoch of its config (and the 2SVAE its second stage)."""
    return (run.epoch, run.step) == (run.config.epochs, 0) and not run.model.second_stage_pending(run.epoch)


def _train_timed(config: TrainConfig, resume: bool, progress: bool) -> float:
    """Train the run, or resume it unless it is finished; returns the seconds spent training it,
    over every invocation."""
    record = Path(config.run_dir) / TIME_NAME
    spent = json.loads(record.read_text())["seconds"] if record.is_file() else 0.0
    if resume and _finished(load_run(config.run_dir, config.device)):
        return spent
    started = time.time()
    try:
        train(config, resume=resume, progress=progress, finish=False)
    finally:
        spent += time.time() - started
        atomic_write_text(record, json.dumps({"seconds": round(spent, 1)}) + "\n")
    return spent


def table_row(model: str, metrics: dict, seconds: float) -> dict:
    """The numbers of one model's row (None where a metric was skipped)."""
    fd, fid = metrics["classifier_frechet_distance"], metrics["fid"]
    row = {"model": model, "run": metrics["run"], "epochs": metrics["epoch"],
           "recon_sse": metrics["reconstruction"]["sum_squared_error_per_image"],
           "latent_kl": metrics["latent"]["kl_to_standard_normal"],
           "latent_kl_exact_normal": metrics["latent"]["kl_of_exact_normal_sample"], "train_seconds": seconds}
    for prefix, values in (("fd", fd), ("fid", fid)):
        for key in ("reconstructions", "isotropic", "gmm"):
            row[f"{prefix}_{key}"] = None if "skipped" in values else values[key]
    row["fd_train_vs_heldout"] = None if "skipped" in fd else fd["train_vs_heldout"]
    return row


def markdown_table(rows: list[dict], budget: str, floor: float | None) -> str:
    """The rows as a Markdown table (columns without any value are left out), with notes."""
    columns = [c for c in COLUMNS if any(r[c[0]] is not None for r in rows)]
    lines = ["| model | " + " | ".join(header for _, header, _ in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for r in rows:
        cells = [("-" if r[key] is None else fmt.format(r[key])) for key, _, fmt in columns]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    notes = [f"Budget, the same for every model: {budget}.",
             "recon. SSE: held-out sum of squared errors per image. FD: Fréchet distance to the held-out "
             "images in the feature space of python.evaluate's in-project classifier (lower is better; not "
             "comparable with published FIDs). KL: of the training codes to N(0, I), Kozachenko-Leonenko "
             f"estimate (an exact N(0, I) sample scores {rows[0]['latent_kl_exact_normal']:.2f})."]
    if floor is not None:
        notes.append(f"FD between training and held-out images (the floor): {floor:.2f}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def compare(dataset: str, models: list[str], out: Path, data_dir: str | None = None, n_samples: int = DEFAULT_SAMPLES,
            inception_weights: str | None = None, progress: bool = True, command: str = "", **options) -> dict:
    """Train and evaluate ``models`` on ``dataset`` with one budget; write the table and the PNG.

    Args:
        dataset: as in python.train.
        models: names from ``registry.MODELS``.
        out: output folder (run directories, table.md/.json, samples.png).
        data_dir: the data set's folder (not for digits).
        n_samples: generated images per prior for the Fréchet distances.
        inception_weights: pytorch-fid Inception weights for FIDs (None: skipped).
        progress: progress bars while training.
        command: the command line, recorded in table.json.
        **options: TrainConfig fields shared by every model (epochs, batch_size, lr, seed,
            latent_dim, device, threads); None keeps the data set's default.

    Returns:
        The table as a dict (what table.json holds).
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"models must be a non-empty comma-separated list of {', '.join(MODELS)}; got {models}")
    configs = [model_config(dataset, m, out, data_dir=data_dir, **options) for m in models]  # all checked first
    data = load_dataset(dataset, data_dir)
    device = resolve_device(configs[0][0].device)
    classifier_path = out / CLASSIFIER_NAME
    if data.train.labels is not None and data.test.labels is not None:
        out.mkdir(parents=True, exist_ok=True)
        cached_classifier(classifier_path, data.train, data.test, device)  # one feature space for all
    rows, sample_rows = [], []
    for config, resume in configs:
        seconds = _train_timed(config, resume, progress)
        run = load_run(config.run_dir, config.device)
        if not _finished(run):  # train() returns after saving on Ctrl-C
            raise KeyboardInterrupt
        if classifier_path.is_file():
            shutil.copy(classifier_path, Path(config.run_dir) / CLASSIFIER_NAME)
        metrics = evaluate_run(run, data, n_samples, inception_weights, seed=config.seed)
        rows.append(table_row(config.model, metrics, seconds))
        isotropic, gmm = (sample_images(run, prior, SAMPLES_PER_PRIOR, data.train, config.seed)
                          for prior in ("isotropic", "gmm"))
        sample_rows.append((config.model, torch.cat([isotropic, torch.ones_like(gmm[:1]), gmm])))  # white gap
        print(f"{config.model}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()
                                              if isinstance(v, float)))
    first = configs[0][0]
    budget = (f"{first.epochs} epochs, batch {first.batch_size}, Adam lr {first.lr:g}, latent {first.latent_dim}, "
              f"seed {first.seed}" + "".join(f", EAE beta {c.beta:g}" for c, _ in configs if c.model == "eae"))
    floor = rows[0]["fd_train_vs_heldout"]
    table = {"command": command, "dataset": dataset, "budget": budget, "n_samples": n_samples, "rows": rows}
    (out / f"{TABLE_NAME}.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / f"{TABLE_NAME}.md").write_text(markdown_table(rows, budget, floor))
    save_labelled_rows(sample_rows, out / SAMPLES_NAME, scale=display_scale(data.image_shape[-1]),
                       title=f"{SAMPLES_PER_PRIOR} samples from N(0, I), then {SAMPLES_PER_PRIOR} from the GMM")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command("compare"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="data set (default digits)")
    parser.add_argument("--data-dir", dest="data_dir", help="folder with the data set's files (mnist, cifar10, celeba)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated models (default all: {','.join(MODELS)})")
    parser.add_argument("--out", help="output folder (default runs/compare-<dataset>)")
    parser.add_argument("--epochs", type=int, help="training epochs of every model (default: the data set's)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="images per step (default 100)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the data set's)")
    parser.add_argument("--seed", type=int, help="seed of the weights, data order and samples (default 0)")
    parser.add_argument("--latent-dim", dest="latent_dim", type=int, help="code size (default: the data set's)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: 1 for digits, else torch's default)")
    parser.add_argument("--n-samples", dest="n_samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"generated images per prior for the distances (default {DEFAULT_SAMPLES})")
    parser.add_argument("--inception-weights", dest="inception_weights",
                        help="local pytorch-fid Inception weights, to add Inception FIDs")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = parser.parse_args(argv)
    if args.n_samples < 2:
        parser.error(f"--n-samples must be >= 2; got {args.n_samples}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = Path(args.out) if args.out else Path(DEFAULT_RUNS_DIR) / f"compare-{args.dataset}"
    options = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed", "latent_dim", "device", "threads")}
    command_line = " ".join([command("compare"), *(sys.argv[1:] if argv is None else argv)])
    try:
        compare(args.dataset, models, out, args.data_dir, args.n_samples, args.inception_weights, args.progress,
                command_line, **options)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume (finished models are reused from {out})",
              file=sys.stderr)
        return 130
    print(f"wrote {out / (TABLE_NAME + '.md')}, {out / (TABLE_NAME + '.json')}, {out / SAMPLES_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
