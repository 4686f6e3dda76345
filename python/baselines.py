"""The other models of the paper's comparison (its Table 1), beside the EAE: ``--model`` of
``python -m python.train``.

Every model subclasses :class:`~python.models.Autoencoder` (``ae`` is that class itself), so it
has the EAE's encoder and decoder; only the hooks for the latent layer and the loss differ. The
loss is a mean over the batch of the images' terms.

| --model | latent layer | loss |
| --- | --- | --- |
| ae | z = E(x) | SSE |
| ae-l2 | z = E(x) | SSE + decoder weight decay |
| rae | z = E(x) | SSE + code penalty |
| rae-l2 | z = E(x) | SSE + code penalty + decoder weight decay |
| rae-gp | z = E(x) | SSE + code penalty + decoder gradient penalty |
| rae-sn | z = E(x), spectrally normalised decoder | SSE + code penalty |
| vae | z ~ N(mu(x), sigma(x)^2) | SSE + w KL(q(z|x) || N(0, I)) |
| cv-vae | z ~ N(mu(x), 0.7^2 I) | SSE + w KL |
| wae-mmd | z = E(x) | SSE + (lambda / 0.05) MMD(q(z), N(0, I)) |
| 2svae | z ~ N(mu(x), sigma(x)^2), then a second VAE on the codes | Gaussian NLL with learned variance + KL |

SSE is the per-image sum of squared errors, the EAE's reconstruction term. Weights: the MNIST
configuration of the reference code of each paper (the RAE paper's, ``configurations/config.py``,
for AE, RAE*, VAE and CV-VAE; the WAE and 2SVAE papers' own for theirs), for every data set. The RAE
reference code measures reconstruction per pixel, ``SSE / P`` with P = height x width; its
penalties are multiplied here by P, which keeps the paper's balance between reconstruction and
penalty while the reconstruction term stays the SSE (Adam is invariant to the overall scale).

Generation: every model decodes z ~ N(0, I) ("isotropic"; the 2SVAE draws u ~ N(0, I) and maps it
through its second stage to z) or z from the GMM fitted to its training codes (the posterior means
for the VAEs). ``encode`` gives those deterministic codes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .data import iterate_batches
from .models import Architecture, Autoencoder, LatentLinear

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


# ---------------------------------------------------------------------------------------------
# Loss terms
# ---------------------------------------------------------------------------------------------


def gaussian_kl(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per row, averaged over the rows:
    0.5 sum_j (sigma_j^2 + mu_j^2 - 1 - 2 log sigma_j)."""
    return 0.5 * (torch.exp(2 * log_sigma) + mu.pow(2) - 1 - 2 * log_sigma).sum(1).mean()


def mmd_imq(x: torch.Tensor, y: torch.Tensor, prior_variance: float = 1.0) -> torch.Tensor:
    """The WAE code's MMD^2 estimate between samples x and y (n rows each) with inverse
    multiquadratic kernels k(a, b) = C / (C + ||a - b||^2), summed over C = s * 2 d sigma^2 for
    s in ``IMQ_SCALES`` (sigma^2: the prior's variance).

    Within-sample terms exclude i = j (U-statistics), the cross term averages all n^2 pairs: for
    independent x, y the estimate is unbiased (expectation 0 when x and y share a distribution).
    """
    n, d = x.shape
    dxx, dyy, dxy = torch.cdist(x, x).pow(2), torch.cdist(y, y).pow(2), torch.cdist(x, y).pow(2)
    off_diagonal = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)
    stat = x.new_zeros(())
    for scale in IMQ_SCALES:
        c = scale * 2.0 * d * prior_variance
        within = ((c / (c + dxx) + c / (c + dyy)) * off_diagonal).sum() / (n * n - n)
        stat = stat + within - 2.0 * (c / (c + dxy)).sum() / (n * n)
    return stat


def gradient_penalty(recon_x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The RAE code's decoder gradient penalty: mean over rows and code dimensions of the squared
    gradient of sum(D(z)^2) with respect to z (kept in the graph, to be minimised)."""
    (grad,) = torch.autograd.grad(recon_x.pow(2).sum(), z, create_graph=True)
    return grad.pow(2).mean()


def decoder_weight_decay(decoder: nn.Module) -> torch.Tensor:
    """Sum of squared convolution kernels of the decoder (Keras ``l2`` kernel regulariser on the
    RAE decoder's transposed convolutions; not the first Linear layer, not biases)."""
    kernels = [m.weight for m in decoder.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return sum(w.pow(2).sum() for w in kernels)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class AutoencoderL2(Autoencoder):
    """``ae-l2``: the AE with the decoder weight decay of RAE-L2 (``DECAY`` times
    :func:`decoder_weight_decay`, in the RAE code's per-pixel scale), and no code penalty.

    Ghosh et al. 2020 (the L2 regulariser of RAE-L2 without the code penalty).
    """

    DECAY = 1e-7  # RAE-L2, MNIST

    def penalty(self, z: torch.Tensor, recon_x: torch.Tensor) -> torch.Tensor:
        return self.pixels * self.DECAY * decoder_weight_decay(self.decoder)


class RAE(Autoencoder):
    """``rae``: regularised autoencoder with the code penalty and no decoder regulariser.

    Ghosh et al., "From variational to deterministic autoencoders", ICLR 2020: loss =
    L_REC + beta L_Z, L_Z = 1/2 ||z||^2. Reference code (MNIST): per-pixel reconstruction
    + ``CODE_WEIGHT`` mean_j z_j^2, here times P: SSE + P * CODE_WEIGHT * mean_j z_j^2.
    """

    CODE_WEIGHT = 0.5e-3

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.pixels * self.CODE_WEIGHT * z.pow(2).mean()


class RAEL2(RAE, AutoencoderL2):
    """``rae-l2``: the RAE code penalty plus the decoder weight decay (``DECAY``).

    Ghosh et al. 2020, RAE-L2 (MNIST: code weight 1e-4, L2 weight 1e-7)."""

    CODE_WEIGHT = 1e-4


class RAEGP(RAE):
    """``rae-gp``: the RAE code penalty plus the decoder gradient penalty
    (:func:`gradient_penalty`, weight ``GP_WEIGHT``, times P).

    Ghosh et al. 2020, RAE-GP (MNIST: code weight 1e-4, gradient-penalty weight 0.5e-7)."""

    CODE_WEIGHT = 1e-4
    GP_WEIGHT = 0.5e-7

    def penalty(self, z: torch.Tensor, recon_x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and z.requires_grad):
            return recon_x.new_zeros(())
        return self.pixels * self.GP_WEIGHT * gradient_penalty(recon_x, z)


class RAESN(RAE):
    """``rae-sn``: the RAE code penalty, and spectral normalisation of every decoder layer
    (Linear, transposed and plain convolutions; ``torch.nn.utils.parametrizations.spectral_norm``).

    Ghosh et al. 2020, RAE-SN (MNIST: code weight 0.009). The paper normalises the decoder; the
    reference code also normalised the encoder's convolutions."""

    CODE_WEIGHT = 0.009

    def __init__(self, arch: Architecture, latent_dim: int | None = None, *, k: int = 1, beta: float = 0.0) -> None:
        super().__init__(arch, latent_dim, k=k, beta=beta)
        for layer in list(self.decoder.modules()):
            if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                spectral_norm(layer)


class VAE(Autoencoder):
    """``vae``: variational autoencoder, z = mu(x) + sigma(x) * e, e ~ N(0, I).

    Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014. Gaussian decoder of variance
    1/2 per pixel (-log p(x|z) = SSE + const), as in the RAE paper's VAE: loss = SSE +
    ``KL_WEIGHT`` KL(q(z|x) || N(0, I)), KL_WEIGHT = 0.312 and log sigma = 5 tanh(Linear(h)) on the
    encoder's features h (the RAE reference code, MNIST).
    """

    KL_WEIGHT = 0.312
    CONSTANT_SIGMA: float | None = None  # CV-VAE: sigma fixed for every x and dimension

    def __init__(self, arch: Architecture, latent_dim: int | None = None, *, k: int = 1, beta: float = 0.0) -> None:
        super().__init__(arch, latent_dim, k=k, beta=beta)
        if self.CONSTANT_SIGMA is None:
            self.log_sigma_head = LatentLinear(self.encoder.to_latent.in_features, self.latent_dim)

    def log_sigma(self, features: torch.Tensor) -> torch.Tensor:
        if self.CONSTANT_SIGMA is not None:
            return features.new_full((len(features), self.latent_dim), math.log(self.CONSTANT_SIGMA))
        return 5.0 * torch.tanh(self.log_sigma_head(features))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) of q(z | x), each (N, latent_dim)."""
        features = self.encoder.features(x).flatten(1)
        return self.encoder.to_latent(features), self.log_sigma(features)

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.posterior(x)
        z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
        return z, self.KL_WEIGHT * gaussian_kl(mu, log_sigma)


class ConstantVarianceVAE(VAE):
    """``cv-vae``: the VAE with sigma = 0.7 for every input and dimension.

    Ghosh et al. 2020, CV-VAE (reference code, MNIST: constant sigma 0.7, KL weight 0.039)."""

    KL_WEIGHT = 0.039
    CONSTANT_SIGMA = 0.7


class WAE(Autoencoder):
    """``wae-mmd``: Wasserstein autoencoder with the MMD penalty, deterministic encoder.

    Tolstikhin et al., "Wasserstein auto-encoders", ICLR 2018: loss = c(x, D(z)) + lambda
    MMD(q(z), p(z)), c = 0.05 SSE in the WAE code, lambda = 10 (MNIST), p = N(0, I), inverse
    multiquadratic kernels (:func:`mmd_imq`) against a fresh prior sample of the batch size.
    Divided by 0.05: SSE + 200 MMD.
    """

    MMD_WEIGHT = 10.0
    RECON_FACTOR = 0.05

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        mmd = mmd_imq(z, torch.randn_like(z))
        return z, (self.MMD_WEIGHT / self.RECON_FACTOR) * mmd


class SecondStageVAE(nn.Module):
    """The 2SVAE's second stage: a VAE on the first stage's codes, with fully connected encoder
    and decoder (``depth`` ReLU layers of ``width`` units, their input concatenated to the last
    layer's output) and a learned decoder standard deviation gamma_z."""

    def __init__(self, latent_dim: int, depth: int = 3, width: int = 1024) -> None:
        super().__init__()

        def body() -> nn.Sequential:
            layers: list[nn.Module] = []
            for i in range(depth):
                layers += [nn.Linear(latent_dim if i == 0 else width, width), nn.ReLU()]
            return nn.Sequential(*layers)

        self.encoder_body, self.decoder_body = body(), body()
        self.to_mu = nn.Linear(latent_dim + width, latent_dim)
        self.to_log_sigma = nn.Linear(latent_dim + width, latent_dim)
        self.to_code = nn.Linear(latent_dim + width, latent_dim)
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        return self.to_code(torch.cat([u, self.decoder_body(u)], 1))

    def loss(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per code row, averaged: Gaussian NLL of z with std gamma_z + KL."""
        h = torch.cat([z, self.encoder_body(z)], 1)
        mu, log_sigma = self.to_mu(h), self.to_log_sigma(h)
        z_hat = self.decode(mu + torch.exp(log_sigma) * noise)
        nll = (((z - z_hat) / self.log_gamma.exp()).pow(2) / 2 + self.log_gamma + HALF_LOG_TWO_PI).sum(1).mean()
        return nll + gaussian_kl(mu, log_sigma)


class TwoStageVAE(VAE):
    """``2svae``: the two-stage VAE.

    Dai & Wipf, "Diagnosing and enhancing VAE models", ICLR 2019. Stage 1: a VAE whose decoder
    has a learned standard deviation gamma_x (one scalar): loss = sum_pixels [((x - D(z)) /
    gamma_x)^2 / 2 + log gamma_x + log(2 pi) / 2] + KL, log sigma = Linear(h). Stage 2 (after the
    first stage's epochs, :meth:`fit_second_stage`): a :class:`SecondStageVAE` on samples
    mu + sigma * e of the stage-1 posteriors, twice as many epochs (400 and 800 in their code).
    Generation: u ~ N(0, I), z = stage-2 decoder(u) + gamma_z * e, x = D(z).
    """

    KL_WEIGHT = 1.0
    SECOND_STAGE_EPOCHS_FACTOR = 2

    def __init__(self, arch: Architecture, latent_dim: int | None = None, *, k: int = 1, beta: float = 0.0) -> None:
        super().__init__(arch, latent_dim, k=k, beta=beta)
        self.log_gamma = nn.Parameter(torch.zeros(()))
        self.second_stage = SecondStageVAE(self.latent_dim).requires_grad_(False)  # trained in stage 2 only
        # the first-stage epoch the second stage was fitted after (-1: not yet)
        self.register_buffer("second_stage_epoch", torch.tensor(-1))

    def log_sigma(self, features: torch.Tensor) -> torch.Tensor:
        return self.log_sigma_head(features)

    def data_term(self, recon_loss: torch.Tensor) -> torch.Tensor:
        values = math.prod(self.arch.image_shape)
        return recon_loss / (2 * torch.exp(2 * self.log_gamma)) + values * (self.log_gamma + HALF_LOG_TWO_PI)

    def second_stage_pending(self, epoch: int) -> bool:
        """True until the second stage has been fitted after first-stage epoch ``epoch``."""
        return int(self.second_stage_epoch) != epoch

    @torch.no_grad()
    def _posteriors(self, images, device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.eval()
        chunks = list(torch.arange(len(images)).split(batch_size))
        parts = [self.posterior(x.to(device)) for x in iterate_batches(images, chunks)]
        return torch.cat([mu for mu, _ in parts]), torch.cat([ls for _, ls in parts]).exp()

    def fit_second_stage(self, images, device: torch.device, epochs: int, batch_size: int, lr: float,
                         seed: int, epoch: int) -> list[float]:
        """Train the second stage on the first stage's posteriors of ``images`` (Adam, ``lr``,
        ``SECOND_STAGE_EPOCHS_FACTOR * epochs`` epochs); its own seeded generator makes it
        repeatable. ``epoch``: the first-stage epoch, recorded. Returns the epochs' mean losses."""
        mu, sigma = self._posteriors(images, device, batch_size)
        stage = self.second_stage.requires_grad_(True).train()
        optimizer = torch.optim.Adam(stage.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 2]).generate_state(1)[0]))
        steps, losses = max(1, len(mu) // batch_size), []
        for _ in range(self.SECOND_STAGE_EPOCHS_FACTOR * epochs):
            order = torch.randperm(len(mu), generator=generator).to(device)
            total = 0.0
            for i in range(steps):
                idx = order[i * batch_size:(i + 1) * batch_size]
                e1 = torch.randn(len(idx), self.latent_dim, generator=generator).to(device)
                e2 = torch.randn(len(idx), self.latent_dim, generator=generator).to(device)
                loss = stage.loss(mu[idx] + sigma[idx] * e1, e2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            losses.append(total / steps)
        stage.requires_grad_(False).eval()
        self.second_stage_epoch.fill_(epoch)
        return losses

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, latent_dim) float32 codes on the CPU: u ~ N(0, I) through the second stage."""
        self.eval()
        u = torch.randn(n, self.latent_dim, generator=generator)
        noise = torch.randn(n, self.latent_dim, generator=generator)
        like = self.log_gamma  # the model's device and dtype
        z = self.second_stage.decode(u.to(like)) + self.second_stage.log_gamma.exp() * noise.to(like)
        return z.float().cpu()
