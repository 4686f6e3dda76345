"""The entropic autoencoder (EAE) built on ``eae_kernels.kl_entropy``.

    python -m python.train                               # train (digits by default)
    python -m python.sample --run runs/<name> --prior gmm  # PNG grids
    python -m python.evaluate --run runs/<name>            # metrics.json
    python -m python.compare --dataset digits              # the paper's comparison table

Modules: ``data`` (local data sets), ``models`` (encoder, batch-norm latent, decoder, loss),
``runs`` (config, run directories), ``checkpoint`` (atomic saves, RNG state), ``train``,
``parallel`` (data-parallel training under torchrun), ``baselines`` (AE, RAE, VAE, WAE, 2SVAE
models of the comparison), ``samplers`` (N(0, I) and GMM priors), ``images`` (PNG grids),
``sample``, ``metrics``, ``evaluate``, ``compare``.
"""

from .models import ARCHITECTURES, EAE, EAEOutput, build_model
from .runs import TrainConfig, load_run

__all__ = ["ARCHITECTURES", "EAE", "EAEOutput", "build_model", "TrainConfig", "load_run"]
