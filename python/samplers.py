"""Latent samplers (pythae style): the model's own prior (N(0, I) for all but the 2SVAE), and a
Gaussian mixture fitted to the training codes.

Both work on codes of a model in eval mode: :func:`encode` switches the model to eval first,
so that batch norm (the EAE's latent) uses its running statistics rather than those of the batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import atomic_torch_save
from .data import iterate_batches

GMM_COMPONENTS = 10
GMM_MAX_ITER = 2000
GMM_TOL = 1e-3
GMM_MAX_CODES = 20_000  # fitting on more codes only costs time (CelebA has 162k images)


@torch.no_grad()
def encode(model, images, device: torch.device, batch_size: int = 500, limit: int | None = None,
           seed: int = 0) -> torch.Tensor:
    """Codes (n, latent_dim) of ``images`` on the CPU, the model in eval mode.

    Args:
        model: any model of the package (a :class:`~python.models.Autoencoder`).
        images: a data set split (``TensorImages`` or ``ImageFiles``).
        device: where the model runs.
        batch_size: images per forward pass.
        limit: encode a fixed random subset of at most this many images (seeded by ``seed``).
    """
    model.eval()
    n = len(images)
    if limit is not None and n > limit:
        indices = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    else:
        indices = torch.arange(n)
    chunks = list(indices.split(batch_size))
    return torch.cat([model.encode(x.to(device)).float().cpu() for x in iterate_batches(images, chunks)])


class NormalSampler:
    """z ~ N(0, I): the prior the EAE's entropy term pushes its batch-norm codes towards."""

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, latent_dim) float32 codes on the CPU."""
        return torch.randn(n, self.latent_dim, generator=generator)


class GMMSampler:
    """z from a full-covariance Gaussian mixture fitted to training codes (ex-post density
    estimation, as in the RAE paper): 10 components, max_iter 2000, tol 1e-3 (scikit-learn).

    Args:
        weights: (K,) mixture weights; means: (K, d); covariances: (K, d, d).
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> None:
        self.weights = weights.double()
        self.means = means.double()
        self.covariances = covariances.double()
        self._cholesky = torch.linalg.cholesky(self.covariances)

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def fit(cls, codes: torch.Tensor, n_components: int = GMM_COMPONENTS, seed: int = 0) -> "GMMSampler":
        """Fit to codes (n, d); uses min(n_components, n) components."""
        from sklearn.mixture import GaussianMixture

        n_components = max(1, min(n_components, len(codes)))
        gmm = GaussianMixture(n_components, covariance_type="full", max_iter=GMM_MAX_ITER, tol=GMM_TOL,
                              random_state=seed)
        gmm.fit(codes.double().numpy())
        return cls(torch.from_numpy(gmm.weights_), torch.from_numpy(gmm.means_), torch.from_numpy(gmm.covariances_))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, latent_dim) float32 codes on the CPU."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.latent_dim, 1, generator=generator, dtype=torch.float64)
        z = self.means[component] + (self._cholesky[component] @ noise).squeeze(-1)
        return z.float()

    def state_dict(self) -> dict:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}


def fitted_gmm(run, train_images, seed: int = 0) -> GMMSampler:
    """The GMM sampler of a run, fitted to (at most ``GMM_MAX_CODES``) training codes and cached
    in ``run_dir/gmm.pt`` for the checkpoint it was fitted to."""
    path = Path(run.run_dir) / "gmm.pt"
    key = {"epoch": run.epoch, "step": run.step, "seed": seed}
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return GMMSampler(**cached["gmm"])
    codes = encode(run.model, train_images, run.device, limit=GMM_MAX_CODES, seed=seed)
    sampler = GMMSampler.fit(codes, seed=seed)
    atomic_torch_save({"key": key, "gmm": sampler.state_dict()}, path)
    return sampler


@torch.no_grad()
def decode(model, z: torch.Tensor, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Images (n, C, H, W) in [0, 1] on the CPU from codes (n, latent_dim), model in eval mode."""
    model.eval()
    return torch.cat([model.decode(chunk.to(device)).float().cpu() for chunk in z.split(batch_size)])


class ModelPriorSampler:
    """The codes a model generates from its own prior, its ``sample_codes`` hook: z ~ N(0, I),
    except for the 2SVAE, which maps u ~ N(0, I) through its second stage."""

    def __init__(self, model) -> None:
        self.model = model

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, latent_dim) float32 codes on the CPU."""
        return self.model.sample_codes(n, generator)


def make_sampler(prior: str, run, train_images, seed: int = 0):
    """"isotropic" -> the model's own prior (:class:`ModelPriorSampler`); "gmm" -> the run's
    :func:`fitted_gmm`."""
    if prior == "isotropic":
        return ModelPriorSampler(run.model)
    if prior == "gmm":
        return fitted_gmm(run, train_images, seed)
    raise ValueError(f"prior must be 'isotropic' or 'gmm'; got {prior!r}")
