"""Real-image evidence with error bars: ``python -m python.evidence``.

    python -m python.evidence --data-dir ../shared/data/mnist              # the whole experiment (hours on 2 CPU cores)
    python -m python.evidence --data-dir ../shared/data/mnist --seeds 0    # one piece; rerun to add the others
    python -m python.evidence --data-dir ../shared/data/mnist --report     # tables and figure from the finished runs

On MNIST (by default the network at width 0.25, 30 epochs, seeds 0, 1, 2; the paper's other
hyper-parameters) it trains and evaluates:

- the comparison: the EAE (beta 0.05) against the batch-norm AE (the EAE with beta 0), the VAE,
  the RAE and the WAE-MMD (python/baselines.py), latent 16;
- the narrow-bottleneck sweep (the paper's Fig. 5): the EAE with beta 0 and 0.05 at latent sizes
  2, 4, 8, 16, 32 (latent 16 is shared with the comparison).

Each run is a run directory of python.train under ``--out`` (``seed<s>/<name>``) and is
evaluated by python.evaluate (one in-project classifier for every run, trained once). Finished
runs and their metrics are reused and unfinished ones resumed, so the experiment can be run in
pieces (``--seeds``, ``--no-sweep``, Ctrl-C) across sessions; the report is rewritten after every
run from whatever has finished. Several processes may work on one ``--out`` at once (one per
core: ``taskset -c 0 python -m python.evidence ... &  taskset -c 1 python -m python.evidence
...``): each run is locked while one of them trains or evaluates it, and the others skip it.
Written into ``--out`` (default runs/evidence-<dataset>-w<width>):

    evidence.md, evidence.json  mean +- sd over the seeds of the held-out reconstruction, the
                                classifier-feature FD of N(0, I) and GMM samples, the latent KL to
                                N(0, I); the paired (same seed) difference EAE - BN-AE with its sd;
                                the sweep's latent KL and FD N(0, I) per latent size and beta
    evidence.png                samples from N(0, I) per model (a row each, seed 0) and the latent
                                KL against the latent size for beta 0 and 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

try:  # file locks let several processes share the runs (POSIX; elsewhere one process at a time)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from .checkpoint import atomic_write_text, written_atomically
from .compare import _finished, _train_timed
from .data import DATASETS, load_dataset
from .evaluate import METRICS_NAME, evaluate_run
from .metrics import cached_classifier
from .runs import DEFAULT_RUNS_DIR, PRECISIONS, TrainConfig, command, load_run, read_config, resolve_device
from .sample import sample_images
from .train import LOG_NAME, RESUME_OVERRIDABLE

EAE_BETA = 0.05
# label -> (model, beta) of the comparison
MODELS = {"eae": ("eae", EAE_BETA), "bn-ae": ("eae", 0.0), "vae": ("vae", 0.0), "rae": ("rae", 0.0),
          "wae-mmd": ("wae-mmd", 0.0)}
SWEEP_BETAS = (0.0, EAE_BETA)
METRIC_KEYS = (  # (key, Markdown header, format)
    ("recon", "held-out recon. SSE", "{:.2f}"),
    ("fd_isotropic", "FD N(0, I)", "{:.1f}"),
    ("fd_gmm", "FD GMM", "{:.1f}"),
    ("latent_kl", "latent KL", "{:.2f}"),
)
SAMPLES_PER_ROW = 10
REPORT_NAME, FIGURE_NAME, CLASSIFIER_NAME = "evidence", "evidence.png", "classifier.pt"


@dataclass(frozen=True)
class Job:
    """One training run of the experiment."""

    label: str  # the comparison's label, or "sweep"
    model: str
    beta: float
    latent_dim: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-beta{self.beta:g}-z{self.latent_dim}"


def plan(models: list[str], seeds: list[int], latent_sizes: list[int], latent_dim: int) -> list[Job]:
    """Every run, seed by seed (a finished seed gives a complete table), the comparison first.
    A sweep run with the settings of a comparison run is that run."""
    jobs = []
    for seed in seeds:
        seed_jobs = [Job(label, *MODELS[label], latent_dim, seed) for label in models]
        names = {j.name for j in seed_jobs}
        for size in latent_sizes:
            for beta in SWEEP_BETAS:
                job = Job("sweep", "eae", beta, size, seed)
                if job.name not in names:
                    seed_jobs.append(job)
                    names.add(job.name)
        jobs += seed_jobs
    return jobs


def run_dir(out: Path, job: Job) -> Path:
    return out / f"seed{job.seed}" / job.name


def job_config(job: Job, out: Path, dataset: str, **options) -> tuple[TrainConfig, bool]:
    """(config, resume) of ``job``; an existing run there must have the same settings (up to
    those that may change on resume)."""
    config = TrainConfig.for_dataset(dataset, model=job.model, beta=job.beta, latent_dim=job.latent_dim,
                                     seed=job.seed, evaluate=False, **options)
    config.run_dir = str(run_dir(out, job))
    if not (Path(config.run_dir) / "config.json").is_file():
        return config, False
    existing = read_config(config.run_dir)
    for key, value in vars(config).items():
        if key not in RESUME_OVERRIDABLE and key != "run_dir" and getattr(existing, key) != value:
            raise ValueError(f"{config.run_dir} holds a run trained with {key}={getattr(existing, key)!r}, not "
                             f"{value!r}: choose another --out, or remove that folder")
    return config, True


def metrics_of(config: TrainConfig, data, n_samples: int, classifier: Path | None) -> dict:
    """The run's metrics.json when it belongs to the finished run and ``n_samples``; else
    evaluate it with the experiment's classifier (trained at the first evaluation, then reused:
    one feature space for every run) and write it."""
    metrics = stored_metrics(config, n_samples)
    if metrics is not None:
        return metrics
    if classifier is not None:
        with run_lock(classifier, wait=True):  # trained once, by whichever process gets here first
            cached_classifier(classifier, data.train, data.test, resolve_device(config.device))
        shutil.copy(classifier, Path(config.run_dir) / CLASSIFIER_NAME)
    return evaluate_run(load_run(config.run_dir, config.device), data, n_samples, seed=config.seed)


def stored_metrics(config: TrainConfig, n_samples: int) -> dict | None:
    """The run's metrics.json if it belongs to the finished run and ``n_samples``, else None."""
    path = Path(config.run_dir) / METRICS_NAME
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    fd = metrics.get("classifier_frechet_distance", {})
    if metrics.get("epoch") == config.epochs and fd.get("n_samples", n_samples) == n_samples:
        return metrics
    return None


@contextlib.contextmanager
def run_lock(path: Path, wait: bool = False):
    """Hold the lock file ``.<name>.lock`` beside ``path`` (a run directory or a file); yields
    True, or False when another process holds it and ``wait`` is False. The operating system
    drops the lock when its holder exits, so a killed process leaves nothing stale."""
    if fcntl is None:  # pragma: no cover - Windows: no sharing between processes
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def training_seconds(run_dir: Path) -> float | None:
    """Wall time of the epochs in the run's log.csv. Its ``seconds`` column counts over every
    invocation, but in runs begun by older versions a resumed run's clock restarted: sum the
    per-epoch increments (the work lost to a kill before the last checkpoint is not counted)."""
    path = run_dir / LOG_NAME
    if not path.is_file():
        return None
    total = previous = 0.0
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            seconds = float(row["seconds"])
            total += seconds - previous if seconds > previous else seconds
            previous = seconds
    return total


def row_of(job: Job, metrics: dict, train_seconds: float | None = None) -> dict:
    fd = metrics["classifier_frechet_distance"]
    skipped = "skipped" in fd
    return {"label": job.label, "model": job.model, "beta": job.beta, "latent_dim": job.latent_dim, "seed": job.seed,
            "run": metrics["run"], "epochs": metrics["epoch"],
            "recon": metrics["reconstruction"]["sum_squared_error_per_image"],
            "fd_isotropic": None if skipped else fd["isotropic"], "fd_gmm": None if skipped else fd["gmm"],
            "fd_floor": None if skipped else fd["train_vs_heldout"],
            "latent_kl": metrics["latent"]["kl_to_standard_normal"],
            "latent_kl_exact_normal": metrics["latent"]["kl_of_exact_normal_sample"],
            "train_seconds": train_seconds, "eval_seconds": metrics.get("seconds")}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> tuple[float, float | None, int]:
    """(mean, sample sd or None for a single value, n)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def _cell(values: list[float | None], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, sd, n = mean_sd(values)
    text = fmt.format(mean) if sd is None else f"{fmt.format(mean)} ± {fmt.replace('+', '').format(sd)}"
    return text if n > 1 else f"{text} (1 seed)"


def _find(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def paired_differences(rows: list[dict], a: dict, b: dict, key: str) -> list[float]:
    """Per seed, ``key`` of the run matching ``a`` minus that of the run matching ``b`` (seeds
    where both finished)."""
    out = []
    for ra in _find(rows, **a):
        rb = _find(rows, **b, seed=ra["seed"])
        if rb and ra[key] is not None and rb[0][key] is not None:
            out.append(ra[key] - rb[0][key])
    return out


def report(rows: list[dict], models: list[str], latent_sizes: list[int], latent_dim: int, settings: str) -> str:
    """The Markdown report of the finished runs ``rows``."""
    main = [r for r in rows if r["latent_dim"] == latent_dim]
    lines = [f"Settings: {settings}.", "",
             "Comparison (latent %d), mean ± sd over the seeds:" % latent_dim, "",
             "| model | seeds | " + " | ".join(h for _, h, _ in METRIC_KEYS) + " |",
             "| --- | ---: |" + " ---: |" * len(METRIC_KEYS)]
    for label in models:
        model, beta = MODELS[label]
        found = _find(main, model=model, beta=beta)
        lines.append(f"| {label} | {len(found)} | " + " | ".join(_cell([r[k] for r in found], fmt)
                                                                for k, _, fmt in METRIC_KEYS) + " |")
    if "eae" in models and "bn-ae" in models:
        eae, bnae = {"model": "eae", "beta": EAE_BETA, "latent_dim": latent_dim}, {"model": "eae", "beta": 0.0,
                                                                                    "latent_dim": latent_dim}
        diffs = {k: paired_differences(main, eae, bnae, k) for k, _, _ in METRIC_KEYS}
        n = len(diffs["recon"])
        lines.append(f"| EAE - BN-AE, paired | {n} | " + " | ".join(_cell(diffs[k], fmt.replace("{:", "{:+")) for k, _, fmt in METRIC_KEYS)
                     + " |")
    lines += ["", "Narrow-bottleneck sweep (the EAE with beta 0 = the batch-norm AE, and beta %g), mean ± sd over "
              "the seeds; the difference is paired by seed:" % EAE_BETA, "",
              "| latent | seeds | KL, beta 0 | KL, beta %g | KL difference | FD N(0, I), beta 0 | FD N(0, I), beta %g "
              "| FD difference | exact-normal KL |" % (EAE_BETA, EAE_BETA),
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in latent_sizes:
        b0, b1 = ({"model": "eae", "beta": beta, "latent_dim": size} for beta in SWEEP_BETAS)
        r0, r1 = _find(rows, **b0), _find(rows, **b1)
        exact = [r["latent_kl_exact_normal"] for r in r0 + r1]
        lines.append(f"| {size} | {min(len(r0), len(r1))} | {_cell([r['latent_kl'] for r in r0], '{:.2f}')} | "
                     f"{_cell([r['latent_kl'] for r in r1], '{:.2f}')} | "
                     f"{_cell(paired_differences(rows, b1, b0, 'latent_kl'), '{:+.2f}')} | "
                     f"{_cell([r['fd_isotropic'] for r in r0], '{:.1f}')} | "
                     f"{_cell([r['fd_isotropic'] for r in r1], '{:.1f}')} | "
                     f"{_cell(paired_differences(rows, b1, b0, 'fd_isotropic'), '{:+.1f}')} | "
                     f"{_cell(exact, '{:.2f}')} |")
    floors = [r["fd_floor"] for r in rows if r["fd_floor"] is not None]
    lines += ["", "recon.: held-out sum of squared errors per image. FD: Fréchet distance to the held-out images in "
              "the features of the in-project classifier (lower is better; not comparable with published FIDs"
              + (f"; training vs held-out images: {statistics.fmean(floors):.1f}" if floors else "") + "). "
              "Latent KL: of the training codes to N(0, I), Kozachenko-Leonenko estimate; compare it with the "
              "same estimate for an exact N(0, I) sample (last column), not with 0. sd: sample standard "
              "deviation over seeds; a paired difference is the same seed's EAE minus its beta-0 run."]
    train_s = [r["train_seconds"] for r in rows if r.get("train_seconds") is not None]
    eval_s = [r["eval_seconds"] for r in rows if r.get("eval_seconds") is not None]
    if train_s:
        lines += ["", f"Compute: {len(train_s)} runs trained in {sum(train_s) / 3600:.1f} h in all "
                  f"({min(train_s) / 60:.1f}-{max(train_s) / 60:.1f} min each, median "
                  f"{statistics.median(train_s) / 60:.1f}), evaluated in {sum(eval_s) / 3600:.1f} h "
                  "(one process per run; processes on separate cores run side by side)."]
    return "\n".join(lines) + "\n"


def figure(out: Path, sample_rows: list[tuple[str, torch.Tensor]], rows: list[dict], latent_sizes: list[int],
           title: str) -> Path | None:
    """evidence.png: the sample rows (left) and latent KL vs latent size (right); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("evidence.png skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return None
    from .images import image_grid

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.0, 0.75 * len(sample_rows) + 1)),
                                      gridspec_kw={"width_ratios": [1.6, 1]})
    if sample_rows:
        grid = image_grid(torch.cat([images for _, images in sample_rows]), nrow=SAMPLES_PER_ROW)
        left.imshow(grid, cmap="gray", vmin=0, vmax=255)
        height = grid.shape[0] / len(sample_rows)
        left.set_yticks([height * (i + 0.5) for i in range(len(sample_rows))], [label for label, _ in sample_rows])
        left.set_xticks([])
    left.set_title("samples from N(0, I), seed 0")
    for beta, marker in zip(SWEEP_BETAS, ("o", "s")):
        sizes, means, sds = [], [], []
        for size in latent_sizes:
            values = [r["latent_kl"] for r in _find(rows, model="eae", beta=beta, latent_dim=size)]
            if values:
                mean, sd, _ = mean_sd(values)
                sizes.append(size)
                means.append(mean)
                sds.append(sd or 0.0)
        if sizes:
            right.errorbar(sizes, means, yerr=sds, marker=marker, capsize=3, label=f"beta {beta:g}")
    if right.lines:
        right.legend()
    right.set_xscale("log", base=2)
    right.set_xlabel("latent size")
    right.set_ylabel("latent KL to N(0, I) (nats)")
    right.set_title("narrow bottleneck: mean ± sd over seeds")
    fig.suptitle(title)
    fig.tight_layout()
    path = out / FIGURE_NAME
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def evidence(dataset: str, out: Path, data_dir: str | None = None, models: list[str] | None = None,
             seeds: list[int] = (0, 1, 2), latent_sizes: list[int] = (2, 4, 8, 16, 32), n_samples: int = 10_000,
             train: bool = True, progress: bool = False, command_line: str = "", **options) -> dict:
    """Train (unless ``train`` is False) and evaluate every run of the plan; write the report.

    Args:
        dataset: as in python.train (the experiment: "mnist").
        out: output folder.
        data_dir: the data set's folder.
        models: labels of the comparison (keys of ``MODELS``; default all).
        seeds: seeds of every run.
        latent_sizes: of the sweep (empty: no sweep).
        n_samples: generated images per prior for the Fréchet distances.
        train: False reports only the runs that have finished.
        progress: progress bars while training.
        command_line: recorded in evidence.json.
        **options: TrainConfig fields shared by every run (epochs, width, precision, compile,
            threads, device, batch_size, lr); None keeps the data set's default.

    Returns:
        What evidence.json holds.
    """
    models = list(MODELS) if models is None else models
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"models must be a non-empty comma-separated list of {', '.join(MODELS)}; got {models}")
    latent_dim = TrainConfig.for_dataset(dataset).latent_dim
    jobs = plan(models, list(seeds), list(latent_sizes), latent_dim)
    configs = [(job, *job_config(job, out, dataset, data_dir=data_dir, **options)) for job in jobs]  # all checked
    data = load_dataset(dataset, data_dir)
    first = configs[0][1]
    labelled = data.train.labels is not None and data.test.labels is not None
    classifier = out / CLASSIFIER_NAME if labelled else None
    settings = (f"{dataset}, {len(data.train)} training / {len(data.test)} held-out images, width {first.width:g}, "
                f"{first.epochs} epochs, batch {first.batch_size}, Adam lr {first.lr:g}, precision {first.precision}, "
                f"{n_samples} samples per prior")
    started = time.time()

    def finished_rows() -> list[dict]:  # every finished and evaluated run, whichever process did it
        rows = []
        for job, config, _ in configs:
            metrics = stored_metrics(config, n_samples)
            if metrics is not None:
                rows.append(row_of(job, metrics, training_seconds(Path(config.run_dir))))
        return rows

    for i, (job, config, _) in enumerate(configs):
        if stored_metrics(config, n_samples) is not None:
            continue  # finished and evaluated: the report reads it
        # a report only reads and evaluates finished runs: it must not make a training process skip one
        with run_lock(Path(config.run_dir)) if train else contextlib.nullcontext(True) as mine:
            if not mine:
                print(f"[{i + 1}/{len(configs)}] {config.run_dir}: another process has it, skipped", flush=True)
                continue
            resume = (Path(config.run_dir) / "config.json").is_file()  # checked now: another process may have begun it
            if not (resume and _finished(load_run(config.run_dir, config.device))):
                if not train:
                    continue
                print(f"[{i + 1}/{len(configs)}] training {config.run_dir}", flush=True)
                _train_timed(config, resume, progress)
                if not _finished(load_run(config.run_dir, config.device)):  # train() returns after saving on Ctrl-C
                    raise KeyboardInterrupt
            metrics_of(config, data, n_samples, classifier)
        write_report(out, finished_rows(), models, list(latent_sizes), latent_dim, settings, command_line)
    rows = finished_rows()
    result = write_report(out, rows, models, list(latent_sizes), latent_dim, settings, command_line)
    print(f"{len(rows)} of {len(configs)} runs finished ({time.time() - started:.0f} s this invocation)")
    sample_rows = []
    for label in models:  # the figure: samples of each comparison model, seed 0 (or the first seed)
        job = Job(label, *MODELS[label], latent_dim, seeds[0])
        config = next((c for j, c, _ in configs if j == job), None)
        if config is not None and any((r["model"], r["beta"], r["latent_dim"], r["seed"]) ==
                                      (job.model, job.beta, job.latent_dim, job.seed) for r in rows):
            run = load_run(config.run_dir, config.device)
            sample_rows.append((label, sample_images(run, "isotropic", SAMPLES_PER_ROW, data.train, config.seed)))
    figure(out, sample_rows, rows, list(latent_sizes), f"{dataset}, width {first.width:g}, {first.epochs} epochs")
    return result


def write_report(out: Path, rows: list[dict], models: list[str], latent_sizes: list[int], latent_dim: int,
                 settings: str, command_line: str) -> dict:
    result = {"command": command_line, "settings": settings, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{REPORT_NAME}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{REPORT_NAME}.md", report(rows, models, latent_sizes, latent_dim, settings))
    return result


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers; got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command("evidence"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="mnist", help="data set (default mnist)")
    parser.add_argument("--data-dir", dest="data_dir", help="folder with the data set's files")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comparison models (default all: {','.join(MODELS)}; bn-ae is the EAE with beta 0)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--latent-sizes", dest="latent_sizes", default="2,4,8,16,32",
                        help="latent sizes of the narrow-bottleneck sweep (default 2,4,8,16,32)")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false", help="the comparison only")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of every run (default 30)")
    parser.add_argument("--width", type=float, default=0.25, help="network width (default 0.25)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default) or bf16")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--n-samples", dest="n_samples", type=int, default=10_000,
                        help="generated images per prior for the distances (default 10000)")
    parser.add_argument("--out", help="output folder (default runs/evidence-<dataset>-w<width>)")
    parser.add_argument("--report", dest="train", action="store_false",
                        help="train nothing: report the runs that have finished")
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(DEFAULT_RUNS_DIR) / f"evidence-{args.dataset}-w{args.width:g}"
    command_line = " ".join([command("evidence"), *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.n_samples < 2:
            raise ValueError(f"--n-samples must be >= 2; got {args.n_samples}")
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        seeds = _ints(args.seeds, "--seeds")
        sizes = _ints(args.latent_sizes, "--latent-sizes") if args.sweep else []
        if not seeds:
            raise ValueError("--seeds must name at least one seed")
        options = {k: getattr(args, k) for k in ("epochs", "width", "precision", "compile", "threads", "device")}
        evidence(args.dataset, out, args.data_dir, models, seeds, sizes, args.n_samples, args.train, args.progress,
                 command_line, **options)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to resume (finished runs are reused from {out})",
              file=sys.stderr)
        return 130
    print(f"wrote {out / (REPORT_NAME + '.md')}, {out / (REPORT_NAME + '.json')}, {out / FIGURE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
