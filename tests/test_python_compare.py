"""The models of the paper's comparison (python/baselines.py) and python -m python.compare.

- Each loss term on a case with a known value (Gaussian KL, IMQ MMD, gradient penalty, weight
  decay, the 2SVAE's likelihood) and each model's loss assembled from them.
- Every model trains 2 steps through python.train and generates from both priors.
- python.compare on two models: table (Markdown, JSON), samples PNG, reuse of finished runs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from python import baselines
from python.baselines import decoder_weight_decay, gaussian_kl, gradient_penalty, mmd_imq
from python.compare import compare
from python.compare import main as compare_main
from python.models import EAE, Autoencoder
from python.registry import MODELS, build_model
from python.runs import TrainConfig, load_run
from python.sample import sample_images
from python.train import build_parser, config_from_args, train
from python.train import main as train_main

from conftest import narrow, state_of, tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread (a second one only spin-waits when the cores are shared); train()
    also sets the thread count, which must not leak into other tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Loss terms with known values
# ---------------------------------------------------------------------------------------------


def test_gaussian_kl_known_values():
    zeros = torch.zeros(5, 3)
    assert gaussian_kl(zeros, zeros).item() == 0.0  # the posterior is the prior
    assert gaussian_kl(torch.ones(5, 3), zeros).item() == pytest.approx(1.5)  # 0.5 ||mu||^2
    log2 = torch.full((4, 2), math.log(2.0))
    assert gaussian_kl(torch.zeros(4, 2), log2).item() == pytest.approx(2 * 0.5 * (4 - 1 - 2 * math.log(2)))


def _imq_by_hand(x: list[list[float]], y: list[list[float]]) -> float:
    n, d = len(x), len(x[0])

    def k(a, b, c):
        return c / (c + sum((ai - bi) ** 2 for ai, bi in zip(a, b)))

    total = 0.0
    for s in baselines.IMQ_SCALES:
        c = s * 2 * d
        within = sum(k(x[i], x[j], c) + k(y[i], y[j], c) for i in range(n) for j in range(n) if i != j)
        cross = sum(k(x[i], y[j], c) for i in range(n) for j in range(n))
        total += within / (n * (n - 1)) - 2 * cross / n**2
    return total


def test_mmd_known_value_and_unbiased_on_identical_distributions():
    x, y = [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], [[0.0, 0.0], [3.0, 1.0], [-1.0, 0.5]]
    got = mmd_imq(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)).item()
    assert got == pytest.approx(_imq_by_hand(x, y), rel=1e-12)
    # the estimator is unbiased: its mean over many pairs of N(0, I) samples is 0 (within 4 standard
    # errors), while a shifted distribution is clearly apart
    g = torch.Generator().manual_seed(0)
    same = torch.stack([mmd_imq(torch.randn(32, 4, generator=g), torch.randn(32, 4, generator=g))
                        for _ in range(400)])
    assert same.mean().abs() < 4 * same.std() / math.sqrt(len(same))
    shifted = mmd_imq(torch.randn(32, 4, generator=g) + 1.0, torch.randn(32, 4, generator=g))
    assert shifted > 20 * same.std() / math.sqrt(len(same))


def test_gradient_penalty_of_a_linear_decoder():
    """D(z) = W z + b: d/dz sum D(z)^2 = 2 W^T (W z + b)."""
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(3, 7).double()
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w, b = linear.weight.detach(), linear.bias.detach()
    expected = (2 * (z.detach() @ w.T + b) @ w).pow(2).mean()
    penalty = gradient_penalty(linear(z), z)
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-12)
    penalty.backward()  # it stays in the graph: the decoder's weights get its gradient
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0


def test_decoder_weight_decay_counts_the_convolution_kernels():
    model = build_model("digits", model="ae-l2")
    kernels = [m for m in model.decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        for m in kernels:
            m.weight.fill_(0.5)
        model.decoder.from_latent.weight.fill_(100.0)  # the Linear layer is not decayed
    assert decoder_weight_decay(model.decoder).item() == pytest.approx(0.25 * sum(m.weight.numel() for m in kernels))


def _losses(model: nn.Module, x: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    return model(x)


@pytest.mark.parametrize("name", ["ae", "ae-l2", "rae", "rae-l2", "rae-gp", "rae-sn"])
def test_deterministic_model_losses(name):
    torch.manual_seed(0)
    model = build_model("digits", latent_dim=4, model=name).double()
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    out = model(x)
    z = model.encode(x)
    assert torch.allclose(out.z, z) and out.recon_loss == (out.recon_x - x).pow(2).sum((1, 2, 3)).mean()
    penalty = torch.zeros((), dtype=torch.float64)
    if name.startswith("rae"):
        penalty = penalty + 256 * type(model).CODE_WEIGHT * z.pow(2).mean()  # P = 16 x 16 pixels
    if name in ("ae-l2", "rae-l2"):
        penalty = penalty + 256 * 1e-7 * decoder_weight_decay(model.decoder)
    if name == "rae-gp":
        penalty = penalty + 256 * 0.5e-7 * gradient_penalty(out.recon_x, out.z)
    torch.testing.assert_close(out.loss, out.recon_loss + penalty, rtol=1e-12, atol=1e-12)
    assert out.loss.requires_grad and not out.entropy.requires_grad  # the entropy is a diagnostic


def test_rae_sn_normalises_every_decoder_layer():
    model = build_model("digits", model="rae-sn").eval()
    layers = [m for m in model.decoder.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    assert not any(hasattr(m, "parametrizations") for m in model.encoder.modules())
    assert torch.linalg.matrix_norm(model.decoder.from_latent.weight, ord=2) < 1.05  # after its power iterations


def test_vae_losses():
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    for name, kl_weight in (("vae", 0.312), ("cv-vae", 0.039)):
        torch.manual_seed(0)
        model = build_model("digits", latent_dim=4, model=name).double()
        out = _losses(model, x, seed=1)
        mu, log_sigma = model.posterior(x)
        torch.manual_seed(1)
        z = mu + log_sigma.exp() * torch.randn_like(mu)  # the same noise as in forward
        torch.testing.assert_close(out.z, z)
        torch.testing.assert_close(out.loss, out.recon_loss + kl_weight * gaussian_kl(mu, log_sigma))
        assert torch.equal(model.encode(x), mu)  # codes for GMMs and reconstructions: the means
        if name == "cv-vae":
            assert torch.allclose(log_sigma.exp(), torch.full_like(log_sigma, 0.7))
            assert not hasattr(model, "log_sigma_head")  # no parameter left unused (DDP needs that)


def test_wae_loss_is_recon_plus_scaled_mmd_to_a_prior_sample():
    torch.manual_seed(0)
    model = build_model("digits", latent_dim=4, model="wae-mmd").double()
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    out = _losses(model, x, seed=3)
    torch.manual_seed(3)
    z = model.encode(x)
    expected = out.recon_loss + (10 / 0.05) * mmd_imq(z, torch.randn_like(z))
    torch.testing.assert_close(out.loss, expected)


def test_two_stage_vae_likelihood_and_second_stage():
    torch.manual_seed(0)
    model = build_model("digits", latent_dim=4, model="2svae").double()
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    out = _losses(model, x, seed=1)
    mu, log_sigma = model.posterior(x)
    # gamma_x = 1 at the start: NLL = SSE / 2 + 256 log(2 pi) / 2 per image
    nll = out.recon_loss / 2 + 256 * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(out.loss, nll + gaussian_kl(mu, log_sigma))
    assert not any(p.requires_grad for p in model.second_stage.parameters())  # trained in stage 2 only
    assert model.second_stage_pending(1)
    codes = model.sample_codes(5, torch.Generator().manual_seed(0))
    assert codes.shape == (5, 4) and codes.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Every model through python.train: 2 steps, then samples from both priors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_train():
    from python.data import load_dataset

    return load_dataset("digits").train


@pytest.mark.parametrize("name", [n if n == "eae" else pytest.param(n, marks=pytest.mark.slow) for n in MODELS])
def test_every_model_trains_two_steps_and_samples(tmp_path, monkeypatch, digits_train, name):
    narrow("digits", monkeypatch)
    config = tiny_config(tmp_path, "digits", model=name, batch_size=800, latent_dim=4)  # 1617 images: 2 steps
    torch.manual_seed(config.seed)
    initial = build_model("digits", config.latent_dim, config.beta, config.k, name).state_dict()
    run_dir = train(config, progress=False, finish=False)
    state = state_of(run_dir)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(v["step"].item() == 2 for v in state["optimizer"]["state"].values())  # 2 Adam steps
    trained = build_model("digits", config.latent_dim, config.beta, config.k, name)
    stage_one = [n for n, p in trained.named_parameters() if p.requires_grad]
    unchanged = [n for n in stage_one if torch.equal(state["model"][n], initial[n])]
    assert not unchanged, f"parameters without a gradient (DDP would refuse them): {unchanged}"
    run = load_run(run_dir, "cpu")
    for prior in ("isotropic", "gmm"):
        images = sample_images(run, prior, 6, digits_train, seed=0)
        assert images.shape == (6, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    if name == "2svae":  # its second stage was fitted after the first stage's epoch and saved
        assert state["model"]["second_stage_epoch"].item() == 1
        assert not torch.equal(state["model"]["second_stage.to_code.weight"], initial["second_stage.to_code.weight"])


def test_model_option_and_beta():
    assert isinstance(build_model("digits"), EAE)
    assert len(MODELS) == 11 and all(issubclass(cls, Autoencoder) for cls in MODELS.values())
    config, _ = config_from_args(build_parser().parse_args(["--model", "vae"]))
    assert (config.model, config.beta) == ("vae", 0.0) and "digits-vae-seed0" in config.run_dir
    with pytest.raises(ValueError, match="beta is the weight of the EAE's entropy term; model 'vae' has none"):
        config_from_args(build_parser().parse_args(["--model", "vae", "--beta", "0.1"]))
    with pytest.raises(ValueError, match="model must be one of eae, ae, ae-l2"):
        TrainConfig.for_dataset("digits", model="gan")
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("digits", model="gan")
    with pytest.raises(SystemExit):
        train_main(["--model", "gan"])
    assert TrainConfig.from_json(TrainConfig.for_dataset("digits", model="rae").to_json()).model == "rae"


# ---------------------------------------------------------------------------------------------
# python -m python.compare
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_writes_the_table_and_samples_and_reuses_runs(tmp_path, monkeypatch, capsys):
    narrow("digits", monkeypatch)
    options = dict(epochs=1, batch_size=800, latent_dim=4, threads=1)
    out = tmp_path / "cmp"
    table = compare("digits", ["eae", "rae"], out, n_samples=50, progress=False, **options)
    assert [r["model"] for r in table["rows"]] == ["eae", "rae"]
    for row in table["rows"]:
        assert row["epochs"] == 1 and row["recon_sse"] > 0 and row["fd_gmm"] >= 0 and row["fid_gmm"] is None
    assert json.loads((out / "table.json").read_text())["rows"] == table["rows"]
    markdown = (out / "table.md").read_text()
    assert markdown.startswith("| model | recon. SSE / image | FD rec. | FD N(0, I) | FD GMM |")
    assert "| rae |" in markdown and "FID" not in markdown.split("\n\n")[0]  # no FID columns without weights
    assert "1 epochs, batch 800" in markdown
    from PIL import Image

    assert Image.open(out / "samples.png").height > 2 * 2 * 16  # two rows of 2x up-scaled digits, and a title
    # same folder again: the finished runs are reused, not retrained; metrics are the same
    checkpoint_time = (out / "rae" / "checkpoint.pt").stat().st_mtime_ns
    again = compare("digits", ["rae"], out, n_samples=50, progress=False, **options)
    assert (out / "rae" / "checkpoint.pt").stat().st_mtime_ns == checkpoint_time
    assert again["rows"][0]["fd_gmm"] == table["rows"][1]["fd_gmm"]
    # other settings in the same folder are refused, naming the setting
    cli = ["--models", "rae", "--out", str(out), "--epochs", "1", "--batch-size", "800", "--latent-dim", "4"]
    assert compare_main(cli + ["--seed", "1"]) == 2
    assert "holds a run trained with seed=0, not 1" in capsys.readouterr().err
    assert compare_main(["--models", "rae,gan", "--out", str(out)]) == 2
    assert "models must be a non-empty comma-separated list" in capsys.readouterr().err
