"""PNG grids from a trained run: samples (N(0, I) or GMM prior), reconstructions, interpolations.

    python -m python.sample --run runs/<name> --n 100 --prior isotropic   # runs/<name>/samples_isotropic.png
    python -m python.sample --run runs/<name> --prior gmm
    python -m python.sample --run runs/<name> --kind all                  # every grid below

Grids written into the run directory:
    samples_isotropic.png  decoded z ~ N(0, I)
    samples_gmm.png        decoded z ~ 10-component GMM fitted to the training codes
    reconstructions.png    held-out images (odd rows) above their reconstructions (even rows)
    interpolations.png     each row decodes a straight line between the codes of two held-out images
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from .data import DataError
from .images import display_scale, save_grid
from .runs import Run, command, open_run
from .samplers import decode, encode, make_sampler

PRIORS = ("isotropic", "gmm")
KINDS = ("samples", "reconstructions", "interpolations", "all")


def sample_images(run: Run, prior: str, n: int, train_images, seed: int = 0) -> torch.Tensor:
    """n decoded samples (n, C, H, W) in [0, 1] from ``prior`` ("isotropic" or "gmm")."""
    sampler = make_sampler(prior, run, train_images, seed)
    z = sampler.sample(n, torch.Generator().manual_seed(seed))
    return decode(run.model, z, run.device)


def reconstruction_pairs(run: Run, test_images, n: int = 50, ncol: int = 10) -> torch.Tensor:
    """Rows of ``ncol`` held-out images, each followed by the row of their reconstructions."""
    n = min(n, len(test_images))
    x = test_images.batch(torch.arange(n))
    recon = decode(run.model, encode(run.model, test_images.subset(torch.arange(n)), run.device), run.device)
    rows = []
    for start in range(0, n, ncol):
        rows += [x[start:start + ncol], recon[start:start + ncol]]
    return torch.cat(rows)


def interpolations(run: Run, test_images, n_pairs: int = 10, steps: int = 10) -> torch.Tensor:
    """(n_pairs * steps) images: row i decodes (1 - t) z_a + t z_b, t = 0..1, for held-out
    images a = 2i, b = 2i + 1."""
    n_pairs = min(n_pairs, len(test_images) // 2)
    z = encode(run.model, test_images.subset(torch.arange(2 * n_pairs)), run.device)
    za, zb = z[0::2], z[1::2]
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    path = (1 - t) * za.unsqueeze(1) + t * zb.unsqueeze(1)
    return decode(run.model, path.reshape(-1, z.shape[1]), run.device)


def write_grids(run: Run, data, kind: str = "all", prior: str | None = None, n: int = 100, seed: int = 0,
                out: str | None = None) -> list[Path]:
    """Write the PNG grids of ``kind`` into the run directory (or ``out`` for a single grid).

    Args:
        run: a loaded run (:func:`~python.runs.load_run`).
        data: its :class:`~python.data.DataSplit`.
        kind: "samples", "reconstructions", "interpolations" or "all".
        prior: for samples: "isotropic", "gmm", or None for both.
        n: number of samples per grid.
        seed: seeds the latent samples.
        out: file name for a single grid instead of the default in the run directory.

    Returns:
        The paths written.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if prior is not None and prior not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}; got {prior!r}")
    scale = display_scale(run.model.arch.image_shape[-1])
    jobs = []
    if kind in ("samples", "all"):
        for p in (prior,) if prior else PRIORS:
            jobs.append((f"samples_{p}.png", lambda p=p: sample_images(run, p, n, data.train, seed),
                         math.ceil(math.sqrt(n))))
    if kind in ("reconstructions", "all"):
        jobs.append(("reconstructions.png", lambda: reconstruction_pairs(run, data.test), 10))
    if kind in ("interpolations", "all"):
        jobs.append(("interpolations.png", lambda: interpolations(run, data.test), 10))
    if out is not None and len(jobs) != 1:
        raise ValueError("--out names a single file: use it with one --kind and one --prior")
    paths = []
    for name, make, nrow in jobs:
        path = Path(out) if out is not None else run.run_dir / name
        paths.append(save_grid(make(), path, nrow=nrow, scale=scale))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command("sample"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help=f"run directory written by {command('train')}")
    parser.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    parser.add_argument("--prior", choices=PRIORS, default=None, help="latent prior (default: both)")
    parser.add_argument("--kind", choices=KINDS, default="samples", help="which grid (default: samples)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the latent samples (default 0)")
    parser.add_argument("--out", default=None, help="output PNG for a single grid (default: in the run directory)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be >= 1; got {args.n}")
    try:
        run, data = open_run(args.run, args.device)
        for path in write_grids(run, data, args.kind, args.prior, args.n, args.seed, args.out):
            print(f"wrote {path}")
    except (FileNotFoundError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
