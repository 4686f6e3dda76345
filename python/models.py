"""The model protocol (:class:`Autoencoder`) and the entropic autoencoder (:class:`EAE`):
convolutional encoder, batch-norm latent, decoder.

    z = BatchNorm1d(latent, affine=False)(E(x))
    loss = mean_over_batch ||D(z) - x||^2 - beta * kl_entropy(z)

The batch norm (no learnable scale or shift) fixes the mean and variance of every code
dimension over the batch; under that constraint, maximising the Kozachenko-Leonenko entropy
pushes the aggregated codes towards N(0, I), so that decoding N(0, I) samples generates data.
``beta = 0`` gives the plain batch-norm autoencoder of the paper's section 5.2.

Architectures (``ARCHITECTURES``) follow the paper, which copies the RAE reference code:

- ``mnist`` (padded to 32x32) and ``cifar10`` (32x32): 4x4 stride-2 convs with 128-256-512-1024
  channels, BN + ReLU each, Linear(4096, latent); decoder Linear(latent, 8*8*1024), ConvT 512,
  256 (4x4, stride 2, BN + ReLU), then a 4x4 stride-1 conv to the image channels and a sigmoid.
- ``celeba`` (64x64): the same with 5x5 kernels, decoder ConvT 512-256-128.
- ``digits`` (16x16, the embedded default): a small variant, 32-64-128 channels, so that
  training takes about a minute on 2 CPU cores.

The last decoder layer is a stride-1 "same" convolution: for stride 1 a transposed convolution
is a convolution with a flipped kernel, and an explicit zero padding (1 before, 2 after for 4x4)
handles the even kernel, which ``nn.ConvTranspose2d`` cannot pad to the same size.

The models of the paper's comparison subclass :class:`Autoencoder` in python/baselines.py;
python/registry.py maps the ``--model`` names to the classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from eae_kernels import kl_entropy


@dataclass(frozen=True)
class Architecture:
    """Shape of an encoder/decoder pair.

    Attributes:
        image_shape: (channels, height, width) of the model's input and output.
        encoder_channels: output channels of the stride-2 convolutions, in order.
        decoder_channels: output channels of the stride-2 transposed convolutions, in order.
        decoder_base: spatial size of the decoder's first feature map (after the Linear layer).
        decoder_base_channels: channels of that first feature map.
        kernel_size: of every convolution (4 or 5).
        latent_dim: default code size.
    """

    image_shape: tuple[int, int, int]
    encoder_channels: tuple[int, ...]
    decoder_channels: tuple[int, ...]
    decoder_base: int
    decoder_base_channels: int
    kernel_size: int
    latent_dim: int

    def scaled(self, width: float) -> "Architecture":
        """The same architecture with every convolution's channel count multiplied by ``width``
        (rounded, at least 1): 0.25 turns the paper's 128-256-512-1024 into 32-64-128-256."""
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < float("inf"):
            raise ValueError(f"width must be a positive number (1.0 = the paper's channel counts); got {width!r}")
        if width == 1:
            return self

        def scale(channels: int) -> int:
            return max(1, round(channels * width))

        return replace(self, encoder_channels=tuple(map(scale, self.encoder_channels)),
                       decoder_channels=tuple(map(scale, self.decoder_channels)),
                       decoder_base_channels=scale(self.decoder_base_channels))


ARCHITECTURES: dict[str, Architecture] = {
    "digits": Architecture((1, 16, 16), (32, 64, 128), (64, 32), 4, 128, 4, 8),
    "mnist": Architecture((1, 32, 32), (128, 256, 512, 1024), (512, 256), 8, 1024, 4, 16),
    "cifar10": Architecture((3, 32, 32), (128, 256, 512, 1024), (512, 256), 8, 1024, 4, 128),
    "celeba": Architecture((3, 64, 64), (128, 256, 512, 1024), (512, 256, 128), 8, 1024, 5, 64),
}


def _padding(kernel_size: int) -> tuple[int, int]:
    """(padding, output_padding) that make a stride-2 conv halve and a stride-2 transposed conv
    double the spatial size ("same" padding of the reference code)."""
    return (kernel_size - 1) // 2, kernel_size % 2


class LatentLinear(nn.Linear):
    """A Linear layer that always computes in float32, also under bf16/fp16 autocast: the codes
    (the entropy estimate, the batch-norm latent, the VAE's posterior) stay float32 while the
    convolutions run in the lower precision. Same parameters as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)


class Encoder(nn.Module):
    """Stride-2 convolutions with BN + ReLU, then a Linear layer to the latent size."""

    def __init__(self, arch: Architecture, latent_dim: int) -> None:
        super().__init__()
        channels, height, width = arch.image_shape
        pad, _ = _padding(arch.kernel_size)
        layers: list[nn.Module] = []
        for out_channels in arch.encoder_channels:
            layers += [
                nn.Conv2d(channels, out_channels, arch.kernel_size, stride=2, padding=pad),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels, height, width = out_channels, (height + 1) // 2, (width + 1) // 2
        self.features = nn.Sequential(*layers)
        self.to_latent = LatentLinear(channels * height * width, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.features(x).flatten(1))


class Decoder(nn.Module):
    """Linear layer to a (base_channels, base, base) map, stride-2 transposed convolutions with
    BN + ReLU, then a stride-1 convolution to the image channels and a sigmoid."""

    def __init__(self, arch: Architecture, latent_dim: int) -> None:
        super().__init__()
        base, channels = arch.decoder_base, arch.decoder_base_channels
        self.base_shape = (channels, base, base)
        self.from_latent = nn.Linear(latent_dim, channels * base * base)
        pad, out_pad = _padding(arch.kernel_size)
        layers: list[nn.Module] = []
        for out_channels in arch.decoder_channels:
            layers += [
                nn.ConvTranspose2d(
                    channels, out_channels, arch.kernel_size, stride=2, padding=pad, output_padding=out_pad
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        total_pad = arch.kernel_size - 1  # "same" padding, the extra pixel right/bottom as in TF
        same = (total_pad // 2, total_pad - total_pad // 2) * 2
        layers += [nn.ZeroPad2d(same), nn.Conv2d(channels, arch.image_shape[0], arch.kernel_size), nn.Sigmoid()]
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.features(self.from_latent(z).view(-1, *self.base_shape))


@dataclass
class ModelOutput:
    """What every model's ``forward`` returns (pythae style).

    Attributes:
        loss: the training objective (0-dim), see :class:`Autoencoder`.
        recon_loss: mean over the batch of the per-image sum of squared errors (0-dim).
        entropy: Kozachenko-Leonenko entropy of the batch codes, in nats (0-dim; detached when
            it is not part of the loss, i.e. when ``beta`` is 0, since it is then a diagnostic).
        z: the codes that were decoded (N, latent_dim).
        recon_x: the reconstructions, same shape as the input, in [0, 1].
    """

    loss: torch.Tensor
    recon_loss: torch.Tensor
    entropy: torch.Tensor
    z: torch.Tensor
    recon_x: torch.Tensor


EAEOutput = ModelOutput  # the name of the first release


class Autoencoder(nn.Module):
    """The model protocol of the package, and the plain autoencoder (``--model ae``).

    Every model (the EAE and the ten models of the comparison) is an ``Encoder`` and a
    ``Decoder`` of one :class:`Architecture` plus this class's hooks. Training minimises

        loss = data_term(SSE) + latent penalty + penalty(z, D(z)) - beta * H(z)

    with SSE the batch mean of the per-image sum of squared errors and H the Kozachenko-Leonenko
    entropy of the batch codes (``eae_kernels.kl_entropy``, always logged). Each hook below is a
    documented no-op here, so a model overrides only what makes it different:

    - :meth:`encode`: the deterministic codes, used for the GMM prior, reconstructions and
      metrics (the EAE: batch-normalised).
    - :meth:`latent` (latent transform): the code decoded in training and its penalty (the VAEs:
      a reparameterised sample and the KL; RAE, WAE: a code penalty).
    - :meth:`data_term`, :meth:`penalty` (loss terms): the reconstruction term from the SSE (the
      2SVAE: a Gaussian likelihood with learned variance) and a penalty on the decoder (weight
      decay, gradient penalty); :attr:`ENTROPY_TERM` says whether ``beta`` may be non-zero.
    - :meth:`second_stage_pending`, :meth:`fit_second_stage` (second stage): a model trained in
      two stages (the 2SVAE) fits its second stage after the last epoch of the first.
    - :meth:`sample_codes` (code sampler): codes of the model's own prior, decoded for the
      "isotropic" samples; N(0, I) here (the 2SVAE: through its second stage).

    Args:
        arch: the encoder/decoder shapes (one of ``ARCHITECTURES``).
        latent_dim: code size; ``None`` takes ``arch.latent_dim``.
        k: neighbour order of the entropy estimator.
        beta: weight of the entropy term; only models with ``ENTROPY_TERM`` accept beta != 0.

    Attributes:
        distributed_entropy: estimate the entropy over the global batch of the default
            torch.distributed group (``kl_entropy(z, distributed=True)``); set by the trainer
            under torchrun, False otherwise.
    """

    ENTROPY_TERM = False  # whether -beta * H(z) may be part of the loss (the EAE's)

    def __init__(self, arch: Architecture, latent_dim: int | None = None, *, k: int = 1, beta: float = 0.0) -> None:
        super().__init__()
        if beta != 0 and not self.ENTROPY_TERM:
            raise ValueError(f"beta is the weight of the EAE's entropy term; {type(self).__name__} has none "
                             "(its loss weights are those of its paper, see python/baselines.py)")
        self.arch = arch
        self.latent_dim = int(latent_dim or arch.latent_dim)
        self.k = int(k)
        self.beta = float(beta)
        self.encoder = Encoder(arch, self.latent_dim)
        self.decoder = Decoder(arch, self.latent_dim)
        self.distributed_entropy = False

    @property
    def pixels(self) -> int:
        """P = height x width (the RAE code measures reconstruction as SSE / P)."""
        return self.arch.image_shape[1] * self.arch.image_shape[2]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic codes (N, latent_dim) of images x (N, C, H, W) in [0, 1]."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] from codes z (N, latent_dim)."""
        return self.decoder(z)

    def latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent transform: (the code decoded in training, its penalty in the loss).
        Here ``encode(x)`` and no penalty."""
        z = self.encode(x)
        return z, z.new_zeros(())

    def data_term(self, recon_loss: torch.Tensor) -> torch.Tensor:
        """Loss term: the reconstruction term from the batch mean SSE. Here the SSE itself."""
        return recon_loss

    def penalty(self, z: torch.Tensor, recon_x: torch.Tensor) -> torch.Tensor:
        """Loss term: a penalty on the decoder, given the decoded codes and the
        reconstructions. Here none (0)."""
        return recon_x.new_zeros(())

    def second_stage_pending(self, epoch: int) -> bool:
        """Second stage: whether :meth:`fit_second_stage` must still run after first-stage
        epoch ``epoch`` (the last one). Here never."""
        return False

    def fit_second_stage(self, images, device: torch.device, epochs: int, batch_size: int, lr: float,
                         seed: int, epoch: int) -> list[float]:
        """Second stage: train what follows the first stage on the training ``images``
        (``epochs``, ``batch_size``, ``lr``, ``seed``: the run's; ``epoch``: the first stage's
        last, to record). Returns the per-epoch mean losses. Here nothing to do: []."""
        return []

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Code sampler: (n, latent_dim) float32 codes on the CPU from the model's own prior,
        decoded for the "isotropic" samples. Here z ~ N(0, I)."""
        return torch.randn(n, self.latent_dim, generator=generator)

    def entropy(self, z: torch.Tensor) -> torch.Tensor:
        """H(z) of the batch codes; differentiable only when it is part of the loss. Estimated in
        float32 at least (the codes of a bf16-autocast forward are float32 already)."""
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()
        if self.beta != 0.0:
            return kl_entropy(z, self.k, distributed=self.distributed_entropy)
        with torch.no_grad():
            return kl_entropy(z.detach(), self.k, distributed=self.distributed_entropy)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        z, latent_penalty = self.latent(x)
        recon_x = self.decode(z)
        recon_loss = (recon_x - x).pow(2).flatten(1).sum(1).mean()  # bf16 recon_x - float32 x: float32
        entropy = self.entropy(z)
        loss = self.data_term(recon_loss) + latent_penalty + self.penalty(z, recon_x)
        if self.beta != 0.0:
            loss = loss - self.beta * entropy
        return ModelOutput(loss=loss, recon_loss=recon_loss, entropy=entropy, z=z, recon_x=recon_x)


class EAE(Autoencoder):
    """``eae``: entropic autoencoder, ``Encoder`` -> ``BatchNorm1d(latent, affine=False)`` ->
    ``Decoder``; loss = SSE - beta * H(z) on the batch-normalised codes z.

    Args:
        arch, latent_dim, k: as in :class:`Autoencoder`.
        beta: weight of the entropy term; 0 gives the plain batch-norm autoencoder.
    """

    ENTROPY_TERM = True

    def __init__(self, arch: Architecture, latent_dim: int | None = None, *, k: int = 1, beta: float = 0.0) -> None:
        super().__init__(arch, latent_dim, k=k, beta=beta)
        self.latent_norm = nn.BatchNorm1d(self.latent_dim, affine=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-normalised codes (N, latent_dim) of images x (N, C, H, W) in [0, 1]."""
        return self.latent_norm(self.encoder(x))
