"""Training configuration and run directories.

A run directory holds ``config.json`` (the resolved :class:`TrainConfig`), ``checkpoint.pt``
(latest state, rewritten atomically every epoch), ``log.csv`` (one row per epoch), the PNG grids
and ``metrics.json``. :func:`load_run` rebuilds the trained model from it for sampling and
evaluation.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .checkpoint import atomic_write_text, load_checkpoint
from .data import DATASETS, DataSplit, load_dataset
from .models import ARCHITECTURES, Autoencoder
from .registry import MODELS, build_model, check_beta

CONFIG_NAME = "config.json"
PRECISIONS = ("fp32", "bf16")
DEFAULT_RUNS_DIR = "runs"

# Per-data-set defaults (the paper / RAE reference code; digits: the small embedded default).
DATASET_DEFAULTS = {
    # One thread for the small digits model: its convolutions gain little from a second thread,
    # and lose a lot (OpenMP spin-waiting) when other processes share the cores.
    "digits": {"lr": 2e-3, "epochs": 40, "beta": 0.05, "threads": 1},
    "mnist": {"lr": 5e-4, "epochs": 100, "beta": 0.05},
    "cifar10": {"lr": 5e-4, "epochs": 100, "beta": 0.05},
    "celeba": {"lr": 1e-3, "epochs": 70, "beta": 0.05},
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as the run's config.json).

    Attributes:
        dataset: "digits" (bundled, the default), "mnist", "cifar10" or "celeba".
        data_dir: folder holding the data set's files (not used by digits).
        model: "eae" or one of the models of the comparison (python/baselines.py).
        beta: weight of the entropy term; 0 gives the plain batch-norm autoencoder (always 0
            for the models other than the EAE).
        epochs: number of passes over the training images.
        batch_size: images per step (also the sample size of the entropy estimate).
        lr: Adam learning rate.
        seed: seeds the weights and the data order.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        latent_dim: code size.
        k: neighbour order of the Kozachenko-Leonenko estimator.
        run_dir: where checkpoints, logs, grids and metrics go.
        evaluate: write metrics.json when training ends.
        threads: CPU threads of torch (``torch.set_num_threads``); None keeps torch's default.
        global_entropy: under torchrun, estimate the entropy over the global batch (every
            process's codes, ``kl_entropy(z, distributed=True)``) rather than each process's own.
        width: multiplies every convolution's channel count of the architecture (1.0 = the
            paper's; 0.25 gives 32-64-128-256 for MNIST). Runs written before this field
            existed load as 1.0.
        precision: "fp32", or "bf16": the convolutions under bfloat16 autocast (the codes, the
            entropy and the losses stay float32); needs a CPU with AVX512_BF16 or AMX, or a
            CUDA GPU with bf16.
        compile: train through ``torch.compile`` (the same model and numbers up to rounding; it
            pays off only over many steps).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "eae"
    beta: float = DATASET_DEFAULTS["digits"]["beta"]
    epochs: int = DATASET_DEFAULTS["digits"]["epochs"]
    batch_size: int = 100
    lr: float = DATASET_DEFAULTS["digits"]["lr"]
    seed: int = 0
    device: str = "auto"
    latent_dim: int = ARCHITECTURES["digits"].latent_dim
    k: int = 1
    run_dir: str = ""
    evaluate: bool = True
    threads: int | None = DATASET_DEFAULTS["digits"]["threads"]
    global_entropy: bool = True
    width: float = 1.0
    precision: str = "fp32"
    compile: bool = False

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "TrainConfig":
        """The defaults of ``dataset`` (learning rate, epochs, beta, latent size), then
        ``overrides`` (None values are ignored); validated. Models other than the EAE get
        beta = 0 (they have no entropy term)."""
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
        values = dict(DATASET_DEFAULTS[dataset], latent_dim=ARCHITECTURES[dataset].latent_dim)
        model = overrides.get("model") or cls.model
        if model in MODELS and not MODELS[model].ENTROPY_TERM:
            values["beta"] = 0.0
        values.setdefault("threads", None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls(dataset=dataset, **values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first bad field and what is accepted."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}; got {self.model!r}")
        _check_number("beta", self.beta, minimum=0.0)
        check_beta(self.model, self.beta)
        _check_number("lr", self.lr, minimum=0.0, strict=True)
        _check_int("epochs", self.epochs, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=2)
        _check_int("latent_dim", self.latent_dim, minimum=1)
        _check_int("k", self.k, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.threads is not None:
            _check_int("threads", self.threads, minimum=1)
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)):
            raise TypeError(f"width must be a number; got {self.width!r}")
        ARCHITECTURES[self.dataset].scaled(self.width)  # ValueError unless 0 < width < inf
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name in ("evaluate", "global_entropy", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.k >= self.batch_size:
            raise ValueError(f"k must be smaller than batch_size (the k-th neighbour of a code is another code "
                             f"of its batch); got k={self.k}, batch_size={self.batch_size}")
        # only the spelling: whether CUDA is present is checked where the device is used, so that
        # a run trained on a GPU can be sampled and evaluated on a CPU machine
        _check_device_name(self.device)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.validate()
        return config


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")


def _check_number(name: str, value, minimum: float, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    bad = value <= minimum if strict else value < minimum
    if bad or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}; got {value}")


_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device_name(device) -> None:
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")


def command(tool: str) -> str:
    """How to run ``tool`` ("train", "sample", "evaluate" or "compare") the way this process was
    started: ``eae-<tool>`` from an installed console command, else ``python -m <package>.<tool>``
    (the package is ``python`` in a checkout, ``eae_models`` when installed)."""
    if os.path.basename(sys.argv[0]).startswith("eae-"):
        return f"eae-{tool}"
    return f"python -m {__package__}.{tool}"


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda"/"cuda:N" only when CUDA is available."""
    _check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for but CUDA is not available "
                             f"(torch {torch.__version__}); use --device cpu or auto")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(device)


def cpu_bf16_feature() -> str | None:
    """The CPU feature that makes bf16 training fast here ("AMX" or "AVX512_BF16"), or None.

    Without one of them oneDNN emulates bf16 convolutions, which is slower than float32."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:  # not Linux: ask torch (private helpers, present in torch 2.x)
        check = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if check is not None and check():
            return "AMX"
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return "AVX512_BF16" if check is not None and check() else None
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512_BF16" if "avx512_bf16" in flags else None


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse ``precision`` where the device cannot run it fast (ValueError saying why)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "bf16":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                             "use --precision fp32")
    elif cpu_bf16_feature() is None:
        raise ValueError("--precision bf16 needs a CPU with AVX512_BF16 or AMX (this one has neither in "
                         "/proc/cpuinfo, so bf16 would be emulated and slower than fp32); use --precision fp32")


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def default_run_dir(config: TrainConfig, name: str | None = None) -> Path:
    """runs/<name>, by default runs/<dataset>-beta<beta>-seed<seed>-<date-time> for the EAE and
    runs/<dataset>-<model>-seed<seed>-<date-time> for the others (with -w<width> when the width
    is not 1)."""
    if name is None:
        what = f"beta{config.beta:g}" if config.model == "eae" else config.model
        width = "" if config.width == 1 else f"-w{config.width:g}"
        name = f"{config.dataset}{width}-{what}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path(DEFAULT_RUNS_DIR) / name


def write_config(config: TrainConfig, run_dir: Path) -> None:
    atomic_write_text(run_dir / CONFIG_NAME, config.to_json() + "\n")


def read_config(run_dir: str | os.PathLike) -> TrainConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{Path(run_dir)} is not a run directory: {path} is missing "
                                f"(run directories are written by {command('train')})")
    return TrainConfig.from_json(path.read_text())


@dataclass
class Run:
    """A trained run: its config, its model (eval mode, on ``device``) and training progress."""

    run_dir: Path
    config: TrainConfig
    model: Autoencoder  # the EAE or a model of the comparison (python/registry.py)
    device: torch.device
    epoch: int
    step: int


def load_run(run_dir: str | os.PathLike, device: str = "auto") -> Run:
    """Rebuild the model of ``run_dir`` from its config.json and checkpoint.pt.

    Args:
        run_dir: a directory written by the trainer (``eae-train``, ``python -m python.train``).
        device: "auto", "cpu", "cuda" or "cuda:N".

    Returns:
        A :class:`Run` whose model is in eval mode (batch norm uses its running statistics,
        which matters for the batch-norm latent).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    checkpoint = load_checkpoint(run_dir)
    torch_device = resolve_device(device)
    model = build_model(config.dataset, config.latent_dim, config.beta, config.k, config.model, config.width)
    model.load_state_dict(checkpoint["model"])
    model.to(torch_device).eval()
    return Run(run_dir, config, model, torch_device, int(checkpoint["epoch"]), int(checkpoint["step"]))


def open_run(run_dir: str | os.PathLike, device: str = "auto") -> tuple[Run, DataSplit]:
    """A run and its data set, as the command-line tools (sample, evaluate) need them: the model
    from :func:`load_run`, the run's thread setting applied, and its data loaded."""
    run = load_run(run_dir, device)
    if run.config.threads is not None:
        torch.set_num_threads(run.config.threads)
    return run, load_dataset(run.config.dataset, run.config.data_dir)
