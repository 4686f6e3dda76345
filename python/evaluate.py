"""Metrics of a trained run, written to ``runs/<name>/metrics.json``.

    python -m python.evaluate --run runs/<name>
    python -m python.evaluate --run runs/<name> --inception-weights ~/pt_inception-2015-12-05-6726825d.pth

- reconstruction: mean per-image sum of squared errors (the training loss's form) and
  per-pixel MSE on the held-out images (at most 10,000, also the reference of the distances);
- latent: Gaussianity of the training codes (eval mode): per-dimension mean/std and the KL
  estimate against N(0, I) from the package's own entropy estimator, next to the same estimate
  for an exact N(0, I) sample (the estimator's bias);
- classifier_frechet_distance (labelled data: digits, MNIST, CIFAR-10): Fréchet distance in the
  64-d feature space of a small classifier trained in-project on the same training images
  (cached in the run directory as classifier.pt) between held-out images and: N(0, I) samples,
  GMM samples, reconstructions; and between training and held-out images (the floor). It is
  weight-free and NOT comparable with published FIDs;
- fid: Inception FID, only with ``--inception-weights`` (and the pytorch_fid package); otherwise
  the reason it was skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .checkpoint import atomic_write_text
from .data import DataError
from .metrics import (
    LATENT_MAX_CODES,
    cached_classifier,
    features_of,
    fingerprint,
    frechet_distance,
    gaussian_stats,
    inception_fid_model,
    latent_gaussianity,
)
from .runs import Run, command, open_run
from .samplers import decode, encode, make_sampler

METRICS_NAME = "metrics.json"
DEFAULT_SAMPLES = 10_000
REFERENCE_LIMIT = 10_000  # held-out images used as the reference statistics


def evaluate_run(run: Run, data, n_samples: int = DEFAULT_SAMPLES, inception_weights: str | None = None,
                 seed: int = 0, write: bool = True) -> dict:
    """Compute the metrics of ``run`` (see the module docstring); write metrics.json if ``write``.

    Args:
        run: a loaded run (:func:`~python.runs.load_run`).
        data: its :class:`~python.data.DataSplit`.
        n_samples: generated images per prior for the Fréchet distances.
        inception_weights: path of the pytorch-fid Inception weights, or None (FID skipped).
        seed: seeds the latent samples and the code subsets.

    Returns:
        The metrics dict.
    """
    started = time.time()
    # the held-out images (at most REFERENCE_LIMIT): reconstruction error and reference statistics
    heldout = data.test.subset(torch.arange(min(REFERENCE_LIMIT, len(data.test))))
    reference = heldout.batch(torch.arange(len(heldout)))
    recon = decode(run.model, encode(run.model, heldout, run.device), run.device)
    per_image = (recon - reference).pow(2).flatten(1).sum(1)
    metrics = {
        "run": str(run.run_dir), "dataset": run.config.dataset, "model": run.config.model, "beta": run.config.beta,
        "k": run.config.k,
        "latent_dim": run.model.latent_dim, "epoch": run.epoch, "train_images": len(data.train),
        "heldout_images": len(data.test),
        "reconstruction": {"heldout_images": len(reference), "sum_squared_error_per_image": per_image.mean().item(),
                           "mse_per_pixel": per_image.mean().item() / reference[0].numel()},
    }
    codes = encode(run.model, data.train, run.device, limit=LATENT_MAX_CODES, seed=seed)
    metrics["latent"] = {"codes": "training images, model in eval mode",
                         **latent_gaussianity(codes, run.config.k, seed)}

    # Feature extractors of the Fréchet distances: key -> (extractor, batch size, fields of the entry)
    extractors = {}
    too_few = "skipped: needs at least 2 held-out images" if len(reference) < 2 else None
    if data.train.labels is None or data.test.labels is None:
        metrics["classifier_frechet_distance"] = {"skipped": "the data set has no labels to train the classifier"}
    elif too_few:
        metrics["classifier_frechet_distance"] = {"skipped": too_few}
    else:
        classifier, accuracy = cached_classifier(run.run_dir / "classifier.pt", data.train, data.test, run.device)
        extractors["classifier_frechet_distance"] = (classifier.features, 500, {
            "description": "Frechet distance in the 64-d feature space of a small CNN trained in-project on the "
                           "training images (not Inception: not comparable with published FIDs); reference = "
                           "held-out images; train_vs_heldout is the floor set by real data",
            "classifier_heldout_accuracy": accuracy, "classifier_fingerprint": fingerprint(classifier)})
    inception, reason = (None, too_few) if too_few else inception_fid_model(inception_weights, run.device)
    if inception is None:
        metrics["fid"] = {"skipped": reason}
    else:
        extractors["fid"] = (inception, 100, {})

    if extractors:  # generate only when some distance will be measured
        candidates = {}
        for prior in ("isotropic", "gmm"):
            z = make_sampler(prior, run, data.train, seed).sample(n_samples, torch.Generator().manual_seed(seed))
            candidates[prior] = decode(run.model, z, run.device)
        candidates["reconstructions"] = recon
        order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
        candidates["train_vs_heldout"] = data.train.batch(order[:min(len(data.train), n_samples)])
        for key, (extractor, batch_size, fields) in extractors.items():
            def stats(images):
                return gaussian_stats(features_of(extractor, images, run.device, batch_size))

            ref_stats = stats(reference)
            metrics[key] = {**fields, "reference_images": len(reference), "n_samples": n_samples,
                            **{name: frechet_distance(stats(images), ref_stats) for name, images in candidates.items()}}
    metrics["seconds"] = round(time.time() - started, 1)
    if write:
        atomic_write_text(run.run_dir / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
    return metrics


def summary(metrics: dict) -> str:
    """A few readable lines of the headline numbers."""
    lines = [f"held-out reconstruction: {metrics['reconstruction']['sum_squared_error_per_image']:.4f} "
             f"(sum of squared errors per image)",
             f"latent KL to N(0, I): {metrics['latent']['kl_to_standard_normal']:.4f} nats "
             f"(exact N(0, I) sample: {metrics['latent']['kl_of_exact_normal_sample']:.4f})"]
    fd = metrics["classifier_frechet_distance"]
    if "skipped" not in fd:
        lines.append(f"classifier-feature Frechet distance: isotropic {fd['isotropic']:.3f}  gmm {fd['gmm']:.3f}  "
                     f"reconstructions {fd['reconstructions']:.3f}  (train vs held-out {fd['train_vs_heldout']:.3f})")
    fid = metrics["fid"]
    lines.append(f"FID: {fid['skipped']}" if "skipped" in fid else
                 f"FID: isotropic {fid['isotropic']:.2f}  gmm {fid['gmm']:.2f}  "
                 f"reconstructions {fid['reconstructions']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=command("evaluate"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help=f"run directory written by {command('train')}")
    parser.add_argument("--n-samples", dest="n_samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"generated images per prior (default {DEFAULT_SAMPLES})")
    parser.add_argument("--inception-weights", dest="inception_weights", default=None,
                        help="local pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth) for FID")
    parser.add_argument("--seed", type=int, default=0, help="seeds the latent samples (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    args = parser.parse_args(argv)
    if args.n_samples < 2:
        parser.error(f"--n-samples must be >= 2; got {args.n_samples}")
    try:
        run, data = open_run(args.run, args.device)
        metrics = evaluate_run(run, data, args.n_samples, args.inception_weights, args.seed)
    except (FileNotFoundError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(metrics))
    print(f"wrote {run.run_dir / METRICS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
