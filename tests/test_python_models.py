"""The EAE model, samplers, metrics and grid writer of the model package (python/)."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

import eae_kernels
from python.images import image_grid, save_grid
from python.metrics import (
    FeatureClassifier,
    frechet_distance,
    gaussian_stats,
    inception_fid_model,
    kl_to_standard_normal,
    latent_gaussianity,
)
from python.models import ARCHITECTURES
from python.registry import build_model
from python.runs import TrainConfig, resolve_device
from python.samplers import GMMSampler, NormalSampler


def test_default_config_model_forward_backward():
    config = TrainConfig.for_dataset("digits")
    torch.manual_seed(0)
    model = build_model(config.dataset, config.latent_dim, config.beta, config.k)
    x = torch.rand(16, *model.arch.image_shape)
    out = model(x)
    assert out.recon_x.shape == x.shape and out.z.shape == (16, config.latent_dim)
    assert 0 <= out.recon_x.min() and out.recon_x.max() <= 1
    # the batch-norm latent (no affine): zero mean, unit (biased) variance over the batch
    assert torch.allclose(out.z.mean(0), torch.zeros(config.latent_dim), atol=1e-5)
    assert torch.allclose(out.z.var(0, unbiased=False), torch.ones(config.latent_dim), atol=1e-3)
    # loss = mean per-image sum of squared errors - beta * KL entropy (the fused op)
    expected_recon = ((out.recon_x - x) ** 2).sum((1, 2, 3)).mean()
    assert torch.allclose(out.recon_loss, expected_recon)
    assert torch.allclose(out.entropy, eae_kernels.reference.kl_entropy(out.z.double(), config.k).float(), atol=1e-4)
    assert torch.allclose(out.loss, out.recon_loss - config.beta * out.entropy)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_entropy_term_reaches_the_encoder_and_beta_zero_is_plain_ae():
    x = torch.rand(12, 1, 16, 16)
    grads = {}
    for beta in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model("digits", beta=beta)
        out = model(x)
        out.loss.backward()
        grads[beta] = model.encoder.to_latent.weight.grad.clone()
        if beta == 0.0:
            assert torch.equal(out.loss, out.recon_loss) and not out.entropy.requires_grad
    assert not torch.allclose(grads[0.0], grads[1.0])


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "celeba"])
def test_paper_architectures(dataset):
    arch = ARCHITECTURES[dataset]
    model = build_model(dataset).eval()
    assert model.latent_dim == {"mnist": 16, "cifar10": 128, "celeba": 64}[dataset]
    convs = [m for m in model.encoder.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 1024]
    assert all(c.kernel_size == (arch.kernel_size,) * 2 and c.stride == (2, 2) for c in convs)
    ups = [m for m in model.decoder.features if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == ([512, 256, 128] if dataset == "celeba" else [512, 256])
    assert model.decoder.from_latent.out_features == 8 * 8 * 1024
    assert not model.latent_norm.affine
    with torch.no_grad():
        x = torch.rand(2, *arch.image_shape)
        assert model.decode(model.encode(x)).shape == x.shape


def test_build_model_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_model("svhn")


def test_train_config_validation_messages():
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        TrainConfig.for_dataset("digits", beta=-1.0)
    with pytest.raises(ValueError, match="k must be smaller than batch_size"):
        TrainConfig.for_dataset("digits", k=4, batch_size=4)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        TrainConfig.for_dataset("digits", lr=0.0)
    with pytest.raises(TypeError, match="epochs must be an int"):
        TrainConfig.for_dataset("digits", epochs=1.5)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"):
        TrainConfig.for_dataset("digits", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    config = TrainConfig.for_dataset("mnist", beta=0.0)
    assert (config.latent_dim, config.lr, config.beta) == (16, 5e-4, 0.0)
    assert TrainConfig.from_json(config.to_json()) == config


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def test_gmm_sampler_shapes_and_fit():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    codes = centres[torch.arange(400) % 2] + 0.5 * torch.randn(400, 3, generator=g)
    sampler = GMMSampler.fit(codes, n_components=2)
    assert sampler.weights.shape == (2,) and sampler.means.shape == (2, 3) and sampler.covariances.shape == (2, 3, 3)
    z = sampler.sample(1000, torch.Generator().manual_seed(1))
    assert z.shape == (1000, 3) and z.dtype == torch.float32
    assert abs((z[:, 0] > 0).float().mean().item() - 0.5) < 0.06  # both modes sampled
    assert torch.allclose(z[z[:, 0] > 0].std(0), torch.full((3,), 0.5), atol=0.06)
    assert torch.equal(sampler.sample(5, torch.Generator().manual_seed(3)),
                       GMMSampler(**sampler.state_dict()).sample(5, torch.Generator().manual_seed(3)))
    default = GMMSampler.fit(torch.randn(60, 2, generator=g))
    assert default.means.shape == (10, 2) and default.sample(7).shape == (7, 2)
    assert GMMSampler.fit(torch.randn(3, 4, generator=g)).means.shape[0] == 3  # fewer codes than components


def test_normal_sampler():
    z = NormalSampler(8).sample(4000, torch.Generator().manual_seed(0))
    assert z.shape == (4000, 8) and abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    stats = gaussian_stats(a)
    assert abs(frechet_distance(stats, stats)) < 1e-9
    mu, cov = np.zeros(3), np.diag([1.0, 4.0, 9.0])
    shifted = (np.array([1.0, 2.0, 2.0]), np.diag([4.0, 4.0, 1.0]))
    # ||dmu||^2 + sum (sqrt(a_i) - sqrt(b_i))^2 for diagonal covariances
    assert math.isclose(frechet_distance((mu, cov), shifted), 9.0 + (1 + 0 + 4), rel_tol=1e-9)
    singular = (np.zeros(3), np.diag([1.0, 0.0, 0.0]))
    assert math.isclose(frechet_distance(singular, singular), 0.0, abs_tol=1e-9)


def test_latent_kl_uses_the_package_estimator():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    assert abs(kl_to_standard_normal(normal)) < 0.1
    # KL(N(0, s^2 I) || N(0, I)) = d/2 (s^2 - 1 - 2 log s)
    s = 2.0
    expected = 4 / 2 * (s**2 - 1 - 2 * math.log(s))
    assert abs(kl_to_standard_normal(s * normal) - expected) < 0.15
    summary = latent_gaussianity(normal.float())
    assert summary["n"] == 2000 and len(summary["mean"]) == len(summary["std"]) == 4
    assert abs(summary["kl_of_exact_normal_sample"]) < 0.1


def test_feature_classifier_shapes():
    model = FeatureClassifier((1, 16, 16))
    x = torch.rand(5, 1, 16, 16)
    assert model(x).shape == (5, 10) and model.features(x).shape == (5, 64)


def test_inception_fid_is_skipped_with_a_reason_and_never_downloads(tmp_path, monkeypatch):
    extractor, reason = inception_fid_model(None, "cpu")
    assert extractor is None and "no --inception-weights given" in reason and "nothing is downloaded" in reason
    assert "is not a file" in inception_fid_model(tmp_path / "missing.pth", "cpu")[1]

    # A stand-in for pytorch_fid.inception whose constructor "downloads" through
    # load_state_dict_from_url, as the real one does: our code must supply the local file.
    weights = tmp_path / "pt_inception.pth"
    torch.save({"w": torch.ones(2048, 3)}, weights)
    fake = types.ModuleType("pytorch_fid.inception")

    def download(url, *args, **kwargs):
        raise AssertionError(f"attempted download of {url}")

    class InceptionV3(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {2048: 3}

        def __init__(self, blocks):
            super().__init__()
            self.w = torch.nn.Parameter(fake.load_state_dict_from_url("https://example.invalid/w.pth")["w"])

        def forward(self, x):
            return [(x.mean((2, 3)) @ self.w.T).view(len(x), 2048, 1, 1)]

    fake.load_state_dict_from_url, fake.InceptionV3 = download, InceptionV3
    package = types.ModuleType("pytorch_fid")
    package.inception = fake
    monkeypatch.setitem(sys.modules, "pytorch_fid", package)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", fake)
    extractor, reason = inception_fid_model(weights, "cpu")
    assert reason is None
    features = extractor(torch.rand(4, 1, 8, 8))  # grey images are expanded to RGB
    assert features.shape == (4, 2048)
    assert fake.load_state_dict_from_url is download  # patched only while building


# ---------------------------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------------------------


def test_image_grid_layout(tmp_path):
    images = torch.zeros(5, 1, 4, 4)
    images[3] = 1.0
    grid = image_grid(images, nrow=3, padding=1, scale=2)
    assert grid.shape == (1 + 2 * 9, 1 + 3 * 9) and grid.dtype == np.uint8
    assert grid[10:18, 1:9].min() == 255 and grid[1:9, 1:9].max() == 0  # image 3 is row 1, col 0
    rgb = image_grid(torch.rand(4, 3, 5, 5))
    assert rgb.shape == (2 + 2 * 7, 2 + 2 * 7, 3)
    from PIL import Image

    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    assert Image.open(path).size == (2 + 3 * 6, 2 + 2 * 6)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1 or 3, H, W\)"):
        image_grid(torch.rand(2, 2, 4, 4))
