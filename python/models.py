"""The entropic autoencoder (EAE): convolutional encoder, batch-norm latent, decoder.

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
  training finishes in minutes on a laptop CPU.

The last decoder layer is a stride-1 "same" convolution: for stride 1 a transposed convolution
is a convolution with a flipped kernel, and an explicit zero padding (1 before, 2 after for 4x4)
handles the even kernel, which ``nn.ConvTranspose2d`` cannot pad to the same size.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        self.to_latent = nn.Linear(channels * height * width, latent_dim)

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
class EAEOutput:
    """What :meth:`EAE.forward` returns (pythae style).

    Attributes:
        loss: recon_loss - beta * entropy, the training objective (0-dim).
        recon_loss: mean over the batch of the per-image sum of squared errors (0-dim).
        entropy: Kozachenko-Leonenko entropy of the batch codes, in nats (0-dim; detached when
            beta is 0, since it then only serves as a diagnostic).
        z: the batch-normalised codes (N, latent_dim).
        recon_x: the reconstructions, same shape as the input, in [0, 1].
    """

    loss: torch.Tensor
    recon_loss: torch.Tensor
    entropy: torch.Tensor
    z: torch.Tensor
    recon_x: torch.Tensor


class EAE(nn.Module):
    """Entropic autoencoder: ``Encoder`` -> ``BatchNorm1d(latent, affine=False)`` -> ``Decoder``.

    Args:
        arch: the encoder/decoder shapes (one of ``ARCHITECTURES``).
        latent_dim: code size; ``None`` takes ``arch.latent_dim``.
        beta: weight of the entropy term; 0 gives the plain batch-norm autoencoder.
        k: neighbour order of the entropy estimator.

    Attributes:
        distributed_entropy: estimate the entropy over the global batch of the default
            torch.distributed group (``kl_entropy(z, distributed=True)``); set by python.train
            under torchrun, False otherwise.
    """

    def __init__(self, arch: Architecture, latent_dim: int | None = None, beta: float = 0.0, k: int = 1) -> None:
        super().__init__()
        self.arch = arch
        self.latent_dim = int(latent_dim or arch.latent_dim)
        self.beta = float(beta)
        self.k = int(k)
        self.encoder = Encoder(arch, self.latent_dim)
        self.latent_norm = nn.BatchNorm1d(self.latent_dim, affine=False)
        self.decoder = Decoder(arch, self.latent_dim)
        self.distributed_entropy = False

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Batch-normalised codes (N, latent_dim) of images x (N, C, H, W) in [0, 1]."""
        return self.latent_norm(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] from codes z (N, latent_dim)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> EAEOutput:
        z = self.encode(x)
        recon_x = self.decode(z)
        recon_loss = (recon_x - x).pow(2).flatten(1).sum(1).mean()
        if self.beta != 0.0:
            entropy = kl_entropy(z, self.k, distributed=self.distributed_entropy)
            loss = recon_loss - self.beta * entropy
        else:
            with torch.no_grad():
                entropy = kl_entropy(z.detach(), self.k, distributed=self.distributed_entropy)
            loss = recon_loss
        return EAEOutput(loss=loss, recon_loss=recon_loss, entropy=entropy, z=z, recon_x=recon_x)


def build_model(dataset: str, latent_dim: int | None = None, beta: float = 0.0, k: int = 1,
                model: str = "eae") -> nn.Module:
    """The EAE of the paper for ``dataset`` ("digits", "mnist", "cifar10" or "celeba"), or one of
    the models it is compared with (python/baselines.py) on the same architecture.

    Args:
        dataset: selects the architecture in ``ARCHITECTURES``.
        latent_dim: code size; ``None`` takes the paper's (16 / 128 / 64; 8 for digits).
        beta: weight of the entropy term (the EAE's only; the other models have none).
        k: neighbour order of the entropy estimator.
        model: "eae" or a key of ``baselines.BASELINES`` ("ae", "vae", "rae", "wae-mmd", ...).

    Returns:
        An :class:`EAE` (or comparison model) in training mode, on the CPU.
    """
    from .baselines import BASELINES, MODELS, check_beta

    if dataset not in ARCHITECTURES:
        raise ValueError(f"dataset must be one of {', '.join(ARCHITECTURES)}; got {dataset!r}")
    if model == "eae":
        return EAE(ARCHITECTURES[dataset], latent_dim, beta, k)
    if model not in BASELINES:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    check_beta(model, beta)
    return BASELINES[model](ARCHITECTURES[dataset], latent_dim, k)
