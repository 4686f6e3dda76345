"""The models ``--model`` can train: one name per :class:`~python.models.Autoencoder` subclass.

A new model is one subclass (overriding the hooks it needs, see ``Autoencoder``) and one line in
``MODELS``; the trainer, ``python.compare``, the samplers and the metrics then handle it.
"""

from __future__ import annotations

from .baselines import (
    RAE,
    RAEGP,
    RAEL2,
    RAESN,
    VAE,
    WAE,
    AutoencoderL2,
    ConstantVarianceVAE,
    TwoStageVAE,
)
from .models import ARCHITECTURES, EAE, Autoencoder

MODELS: dict[str, type[Autoencoder]] = {
    "eae": EAE,
    "ae": Autoencoder,
    "ae-l2": AutoencoderL2,
    "vae": VAE,
    "cv-vae": ConstantVarianceVAE,
    "rae": RAE,
    "rae-l2": RAEL2,
    "rae-gp": RAEGP,
    "rae-sn": RAESN,
    "wae-mmd": WAE,
    "2svae": TwoStageVAE,
}


def model_class(model: str) -> type[Autoencoder]:
    """The class registered as ``model``; ValueError naming the choices otherwise."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    return MODELS[model]


def check_beta(model: str, beta: float) -> None:
    """Only models with an entropy term (the EAE) take beta != 0: raise ValueError otherwise."""
    if beta != 0 and not model_class(model).ENTROPY_TERM:
        raise ValueError(f"beta is the weight of the EAE's entropy term; model {model!r} has none "
                         "(its loss weights are those of its paper, see python/baselines.py)")


def build_model(dataset: str, latent_dim: int | None = None, beta: float = 0.0, k: int = 1,
                model: str = "eae", width: float = 1.0) -> Autoencoder:
    """The model ``model`` (a key of ``MODELS``) on the paper's architecture for ``dataset``.

    Args:
        dataset: selects the architecture in ``ARCHITECTURES`` ("digits", "mnist", "cifar10",
            "celeba").
        latent_dim: code size; ``None`` takes the paper's (16 / 128 / 64; 8 for digits).
        beta: weight of the entropy term (the EAE's; 0 for every other model).
        k: neighbour order of the entropy estimator.
        model: "eae" (default) or a model of the comparison ("ae", "vae", "rae", "wae-mmd", ...).
        width: multiplies every convolution's channel count (``Architecture.scaled``; 1.0 = the
            paper's).

    Returns:
        The model in training mode, on the CPU.
    """
    if dataset not in ARCHITECTURES:
        raise ValueError(f"dataset must be one of {', '.join(ARCHITECTURES)}; got {dataset!r}")
    cls = model_class(model)
    check_beta(model, beta)
    return cls(ARCHITECTURES[dataset].scaled(width), latent_dim, k=k, beta=beta)
