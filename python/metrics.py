"""Evaluation metrics: Fréchet distances, latent Gaussianity, the feature classifier, Inception FID.

- :func:`frechet_distance`: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between the
  Gaussians fitted to two feature sets (the formula of FID).
- :func:`latent_gaussianity`: per-dimension mean/std of codes and KL(codes || N(0, I)) =
  -H + d/2 log(2 pi) + E||z||^2 / 2, with H from the package's own estimator
  (``eae_kernels.kl_entropy``), plus the same estimate for an exact N(0, I) sample of the same
  size (the estimator's own bias: compare KL values against it, not against 0).
- :class:`FeatureClassifier`: a small CNN trained in-project on the labelled training images; its
  64-d penultimate features give a weight-free "classifier-feature Fréchet distance" (a
  stand-in for FID on digits/MNIST; not comparable with published FIDs).
- :func:`inception_fid_model`: the pytorch-fid Inception network with weights read from a local
  file only (never downloaded).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

from eae_kernels import kl_entropy

from .checkpoint import atomic_torch_save
from .data import iterate_batches

CLASSIFIER_SEED = 0
CLASSIFIER_EPOCHS = 10
CLASSIFIER_MAX_IMAGES = 20_000
FEATURE_DIM = 64
LATENT_MAX_CODES = 10_000  # the KL estimate costs O(N^2 d)


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (n, F), in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (n >= 2, F); got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(stats_a: tuple[np.ndarray, np.ndarray], stats_b: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between N(mu_a, S_a) and N(mu_b, S_b).

    Tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2) (same spectrum), which needs no complex
    matrix square root and is stable for singular covariances.
    """
    (mu_a, cov_a), (mu_b, cov_b) = stats_a, stats_b
    evals, evecs = np.linalg.eigh(cov_a)
    sqrt_a = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


# ---------------------------------------------------------------------------------------------
# Latent Gaussianity
# ---------------------------------------------------------------------------------------------


def kl_to_standard_normal(codes: torch.Tensor, k: int = 1) -> float:
    """KL(q || N(0, I)) in nats for samples ``codes`` (n, d) of q: -H(q) + d/2 log(2 pi) +
    E||z||^2 / 2, with H(q) the Kozachenko-Leonenko estimate (``eae_kernels.kl_entropy``)."""
    z = codes.detach().double().cpu()
    d = z.shape[1]
    entropy = kl_entropy(z, k).item()
    return -entropy + 0.5 * d * math.log(2 * math.pi) + 0.5 * z.pow(2).sum(1).mean().item()


def latent_gaussianity(codes: torch.Tensor, k: int = 1, seed: int = 0) -> dict:
    """How close codes (n, d) are to N(0, I).

    Returns:
        dict with ``n``, per-dimension ``mean`` and ``std`` (lists), ``max_abs_mean``,
        ``std_range``, ``kl_to_standard_normal`` (nats) and ``kl_of_exact_normal_sample`` (the
        same estimate for n exact N(0, I) draws: the estimator's bias at this n and d).
    """
    n, d = codes.shape
    mean, std = codes.mean(0), codes.std(0)
    exact = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {
        "n": n,
        "mean": [round(v, 4) for v in mean.tolist()],
        "std": [round(v, 4) for v in std.tolist()],
        "max_abs_mean": mean.abs().max().item(),
        "std_range": [std.min().item(), std.max().item()],
        "kl_to_standard_normal": kl_to_standard_normal(codes, k),
        "kl_of_exact_normal_sample": kl_to_standard_normal(exact, k),
    }


# ---------------------------------------------------------------------------------------------
# Feature classifier (the weight-free stand-in for Inception on digits / MNIST)
# ---------------------------------------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """Two 3x3 conv + max-pool stages, a 64-unit hidden layer (the features) and 10 logits."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int = 10) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def fingerprint(module: nn.Module) -> str:
    """Short SHA-1 of a module's weights: equal fingerprints mean comparable feature spaces."""
    digest = hashlib.sha1()
    for tensor in module.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@torch.no_grad()
def _accuracy(model: FeatureClassifier, images, device) -> float:
    model.eval()
    chunks = list(torch.arange(len(images)).split(500))
    correct = sum((model(x.to(device)).argmax(1).cpu() == images.labels[c]).sum().item()
                  for c, x in zip(chunks, iterate_batches(images, chunks)))
    return correct / len(images)


def train_classifier(train_images, test_images, device, epochs: int = CLASSIFIER_EPOCHS,
                     seed: int = CLASSIFIER_SEED) -> tuple[FeatureClassifier, float]:
    """Train a :class:`FeatureClassifier` on labelled images; returns it (eval mode) and its
    held-out accuracy. Seeded independently of any run, so that runs on the same data get the
    same classifier (the same feature space)."""
    n_classes = int(train_images.labels.max().item()) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureClassifier(train_images.image_shape, max(n_classes, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = min(len(train_images), CLASSIFIER_MAX_IMAGES)
    subset = torch.randperm(len(train_images), generator=generator)[:n]
    for _ in range(epochs):
        model.train()
        chunks = list(subset[torch.randperm(n, generator=generator)].split(100))
        for idx, x in zip(chunks, iterate_batches(train_images, chunks)):
            loss = nn.functional.cross_entropy(model(x.to(device)), train_images.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model, _accuracy(model, test_images, device)


def cached_classifier(path: Path, train_images, test_images, device) -> tuple[FeatureClassifier, float]:
    """:func:`train_classifier`, cached at ``path`` (reused when it matches the image shape)."""
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if tuple(saved["image_shape"]) == tuple(train_images.image_shape):
            model = FeatureClassifier(saved["image_shape"], saved["n_classes"])
            model.load_state_dict(saved["state"])
            return model.to(device).eval(), float(saved["heldout_accuracy"])
    model, accuracy = train_classifier(train_images, test_images, device)
    atomic_torch_save({"image_shape": list(model.image_shape), "n_classes": model.head.out_features,
                       "state": model.state_dict(), "heldout_accuracy": accuracy}, path)
    return model, accuracy


@torch.no_grad()
def features_of(extractor, images: torch.Tensor, device, batch_size: int = 500) -> torch.Tensor:
    """Features (n, F) on the CPU of images (n, C, H, W) in [0, 1], in chunks."""
    return torch.cat([extractor(chunk.to(device)).double().cpu() for chunk in images.split(batch_size)])


# ---------------------------------------------------------------------------------------------
# Inception FID (optional; local weights only)
# ---------------------------------------------------------------------------------------------

INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


def inception_fid_model(weights_path: str | None, device) -> tuple[nn.Module | None, str | None]:
    """(feature extractor of 2048-d pool features, None), or (None, the reason it is unavailable).

    Needs the ``pytorch_fid`` package (which needs torchvision) for the architecture and the
    pytorch-fid weights file (``pt_inception-2015-12-05-6726825d.pth``) at ``weights_path``.
    pytorch-fid's own weight download is replaced by reading that file: nothing is downloaded.
    """
    if weights_path is None:
        return None, (f"skipped: no --inception-weights given (FID needs the pytorch-fid Inception weights "
                      f"{INCEPTION_WEIGHTS_NAME} on disk; nothing is downloaded)")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        return None, f"skipped: --inception-weights {path} is not a file"
    try:
        from pytorch_fid import inception as fid_inception
    except Exception as exc:  # ImportError, or torchvision failing to import with this torch
        return None, (f"skipped: the Inception architecture comes from the pytorch_fid package, which did not "
                      f"import ({type(exc).__name__}: {exc}); pip install pytorch-fid (it needs torchvision)")

    def local_weights(*args, **kwargs):
        return torch.load(path, map_location="cpu", weights_only=True)

    try:
        with mock.patch.object(fid_inception, "load_state_dict_from_url", local_weights):
            network = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except Exception as exc:  # wrong file, wrong format
        return None, f"skipped: could not load Inception weights from {path}: {type(exc).__name__}: {exc}"
    network = network.to(device).eval()

    def extract(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return network(x)[0].flatten(1)

    return extract, None
