"""The entropic autoencoder (EAE) built on ``eae_kernels.kl_entropy``, and the models of the
paper's comparison.

In a checkout this package is ``python`` (``python -m python.train``); ``pip install .`` installs
the same code as ``eae_models`` with the console commands ``eae-train``, ``eae-sample``,
``eae-evaluate`` and ``eae-compare``:

    eae-train                                   # train (digits by default); python -m python.train
    eae-sample --run runs/<name> --prior gmm    # PNG grids; python -m python.sample
    eae-evaluate --run runs/<name>              # metrics.json; python -m python.evaluate
    eae-compare --dataset digits                # the paper's comparison table; python -m python.compare

Modules: ``models`` (the model protocol ``Autoencoder``, the EAE, encoder and decoder),
``baselines`` (AE-L2, RAE, VAE, WAE, 2SVAE models of the comparison), ``registry`` (``--model``
names to classes), ``data`` (local data sets), ``runs`` (config, run directories),
``checkpoint`` (atomic saves with a previous copy, RNG state), ``train``, ``parallel``
(data-parallel training under torchrun), ``samplers`` (model prior and GMM), ``images`` (PNG
grids), ``sample``, ``metrics``, ``evaluate``, ``compare``.
"""

from .models import ARCHITECTURES, EAE, Autoencoder, EAEOutput, ModelOutput
from .registry import MODELS, build_model
from .runs import TrainConfig, load_run

__all__ = ["ARCHITECTURES", "Autoencoder", "EAE", "EAEOutput", "MODELS", "ModelOutput", "build_model",
           "TrainConfig", "load_run"]
