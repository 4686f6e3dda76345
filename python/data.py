"""Data sets, read from local files only (nothing is ever downloaded).

``load_dataset(name, data_dir)`` returns a :class:`DataSplit` of training and held-out images,
each an object with ``len()``, ``batch(indices) -> float32 (B, C, H, W) in [0, 1]``, ``labels``
(int64 tensor, or None) and ``subset(indices)``.

- ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images), scaled to [0, 1] and
  resized to 16x16 (bilinear).
- ``mnist``: the IDX files (``.gz`` or raw) in ``data_dir``, zero-padded from 28x28 to 32x32 as in
  the RAE reference code.
- ``cifar10``: the python pickle batches (``data_batch_1`` ... ``data_batch_5``, ``test_batch``) in
  ``data_dir`` or in its ``cifar-10-batches-py`` subfolder.
- ``celeba``: a folder of images (``.jpg``, ``.jpeg``, ``.png``), read lazily; each is
  centre-cropped to 140x140 and resized to 64x64.

Held-out data: the official test split when the files are there (MNIST ``t10k-*`` next to
``train-*``, CIFAR-10 ``test_batch`` next to ``data_batch_*``); otherwise a fixed random 10% of the
images (seed 0, independent of the training seed), e.g. 9,000 / 1,000 for the MNIST test set alone.

Missing or unreadable files raise :class:`DataError` (a ``ValueError``) naming the files expected.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "mnist", "cifar10", "celeba")
HOLDOUT_FRACTION = 0.1
SPLIT_SEED = 0  # the held-out split never depends on the training seed
CELEBA_CROP, CELEBA_SIZE = 140, 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A data directory is missing, incomplete or holds unreadable files."""


# ---------------------------------------------------------------------------------------------
# Image containers
# ---------------------------------------------------------------------------------------------


class TensorImages:
    """Images held in memory as uint8 (N, C, H, W), with optional int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4, (images.dtype, images.shape)
        assert labels is None or len(labels) == len(images)
        self.images = images
        self.labels = labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """float32 images (B, C, H, W) in [0, 1]."""
        return self.images[indices].float().div_(255.0)

    def subset(self, indices: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images[indices], None if self.labels is None else self.labels[indices])


class ImageFiles:
    """Images read from files on demand (CelebA does not fit in memory as floats).

    Each file is centre-cropped to ``crop`` x ``crop`` and resized to ``size`` x ``size`` RGB.
    """

    def __init__(self, files: Sequence[Path], crop: int = CELEBA_CROP, size: int = CELEBA_SIZE) -> None:
        self.files = list(files)
        self.crop, self.size = crop, size
        self.labels = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                w, h = img.size
                c = min(self.crop, w, h)
                left, top = (w - c) // 2, (h - c) // 2
                img = img.crop((left, top, left + c, top + c)).resize((self.size, self.size), Image.BILINEAR)
                return np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError) as exc:  # PIL raises OSError/UnidentifiedImageError
            raise DataError(f"cannot read image {path}: {exc}") from exc

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """float32 images (B, 3, size, size) in [0, 1], decoded by a few threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
        arrays = list(self._pool.map(self._load, (self.files[i] for i in indices.tolist())))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)

    def subset(self, indices: torch.Tensor) -> "ImageFiles":
        return ImageFiles([self.files[i] for i in indices.tolist()], self.crop, self.size)


@dataclass
class DataSplit:
    """Training and held-out images of one data set.

    Attributes:
        train, test: :class:`TensorImages` or :class:`ImageFiles`.
        description: one line saying where the data came from and how it was split.
    """

    train: TensorImages | ImageFiles
    test: TensorImages | ImageFiles
    description: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def iterate_batches(images, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield ``images.batch(idx)`` for each index tensor, loading the next batch in a background
    thread while the current one is used (this matters for images read from files)."""
    if isinstance(images, TensorImages):
        for idx in index_batches:
            yield images.batch(idx)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(images.batch, index_batches[0]) if len(index_batches) else None
        for i in range(len(index_batches)):
            current = pending.result()
            pending = pool.submit(images.batch, index_batches[i + 1]) if i + 1 < len(index_batches) else None
            yield current


def holdout_split(n: int, fraction: float = HOLDOUT_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) index tensors: a fixed random ``fraction`` of range(n) held out (at least 1),
    the same for every run (seed ``SPLIT_SEED``). Indices are sorted within each part."""
    n_test = max(1, int(round(n * fraction)))
    if n - n_test < 1:
        raise DataError(f"need at least 2 images to hold some out; got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _split_single(images: TensorImages | ImageFiles, what: str) -> DataSplit:
    train_idx, test_idx = holdout_split(len(images))
    return DataSplit(
        images.subset(train_idx),
        images.subset(test_idx),
        f"{what}: {len(train_idx)} training / {len(test_idx)} held-out images "
        f"(fixed random {HOLDOUT_FRACTION:.0%} held out)",
    )


# ---------------------------------------------------------------------------------------------
# digits (bundled with scikit-learn)
# ---------------------------------------------------------------------------------------------


def load_digits(size: int = 16) -> DataSplit:
    """scikit-learn's 1,797 8x8 digits, scaled from 0..16 to [0, 1], resized to ``size``."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    return _split_single(TensorImages(images, labels), "scikit-learn digits (bundled)")


# ---------------------------------------------------------------------------------------------
# MNIST (IDX files)
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8}


def _find(directory: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (each also tried with .gz) that exists in ``directory``."""
    for name in names:
        for candidate in (name, name + ".gz"):
            if (directory / candidate).is_file():
                return directory / candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (raw or gzipped), e.g. MNIST images (N, 28, 28) uint8."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _mnist_file_names(split: str, kind: str) -> list[str]:
    ndim = 3 if kind == "images" else 1
    return [f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"]


def _load_mnist_split(directory: Path, split: str) -> TensorImages | None:
    image_path = _find(directory, _mnist_file_names(split, "images"))
    if image_path is None:
        return None
    images = read_idx(image_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path} must hold 28x28 images; it holds an array of shape {images.shape}")
    label_path = _find(directory, _mnist_file_names(split, "labels"))
    labels = None
    if label_path is not None:
        labels = read_idx(label_path)
        if labels.shape != (len(images),):
            raise DataError(f"{label_path} holds {labels.shape} labels for {len(images)} images in {image_path}")
        labels = torch.from_numpy(labels.astype(np.int64))
    padded = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (2, 2, 2, 2))  # 28x28 -> 32x32
    return TensorImages(padded, labels)


def load_mnist(data_dir: str | os.PathLike) -> DataSplit:
    """MNIST from IDX files in ``data_dir``: ``train-images-idx3-ubyte`` and/or
    ``t10k-images-idx3-ubyte`` (raw or ``.gz``; ``*-images.idx3-ubyte`` spellings accepted), with
    the matching ``*-labels-idx1-ubyte`` files when present (labels are only needed by the
    classifier-feature metric)."""
    directory = _check_dir(data_dir, "mnist", "train-images-idx3-ubyte.gz and/or t10k-images-idx3-ubyte.gz")
    train = _load_mnist_split(directory, "train")
    test = _load_mnist_split(directory, "t10k")
    if train is None and test is None:
        raise DataError(
            f"no MNIST images in {directory}: expected train-images-idx3-ubyte[.gz] and/or "
            "t10k-images-idx3-ubyte[.gz] (with train-labels-idx1-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz])"
        )
    if train is not None and test is not None:
        return DataSplit(train, test, f"MNIST from {directory}: {len(train)} training / {len(test)} test images")
    only = train if train is not None else test
    return _split_single(only, f"MNIST ({'train' if train is not None else 't10k'} file only) from {directory}")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)
# ---------------------------------------------------------------------------------------------

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # The official CIFAR-10 format is a pickle: only open files you trust.
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"cannot read CIFAR-10 batch {path} (expected a python pickle holding b'data' and b'labels'): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DataError(
            f"{path}: expected b'data' of shape (N, 3072) and N labels; got {data.shape} and {labels.shape}"
        )
    return data, labels


def _cifar_images(paths: Sequence[Path]) -> TensorImages:
    parts = [_read_cifar_batch(p) for p in paths]
    data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([lab for _, lab in parts])
    return TensorImages(torch.from_numpy(data), torch.from_numpy(labels))


def load_cifar10(data_dir: str | os.PathLike) -> DataSplit:
    """CIFAR-10 from the python pickle batches in ``data_dir`` (or ``data_dir/cifar-10-batches-py``)."""
    expected = "data_batch_1 ... data_batch_5 and/or test_batch (the CIFAR-10 python version)"
    directory = _check_dir(data_dir, "cifar10", expected)
    if not any((directory / n).is_file() for n in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,)):
        if (directory / "cifar-10-batches-py").is_dir():
            directory = directory / "cifar-10-batches-py"
    train_paths = [directory / n for n in CIFAR_TRAIN_FILES if (directory / n).is_file()]
    test_path = directory / CIFAR_TEST_FILE
    if not train_paths and not test_path.is_file():
        raise DataError(f"no CIFAR-10 batches in {directory}: expected {expected}")
    if train_paths and test_path.is_file():
        train, test = _cifar_images(train_paths), _cifar_images([test_path])
        names = ", ".join(p.name for p in train_paths)
        return DataSplit(train, test,
                         f"CIFAR-10 from {directory}: {len(train)} training ({names}) / {len(test)} test images")
    paths = train_paths or [test_path]
    return _split_single(_cifar_images(paths), f"CIFAR-10 ({', '.join(p.name for p in paths)}) from {directory}")


# ---------------------------------------------------------------------------------------------
# CelebA (a folder of images)
# ---------------------------------------------------------------------------------------------


def load_celeba(data_dir: str | os.PathLike) -> DataSplit:
    """CelebA from a folder of images (e.g. ``img_align_celeba``), read lazily in sorted order,
    centre-cropped to 140x140 and resized to 64x64. The first image is decoded now, so that an
    unreadable folder fails at once rather than mid-training."""
    expected = "a folder of .jpg/.jpeg/.png images such as img_align_celeba/"
    directory = _check_dir(data_dir, "celeba", expected)
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise DataError(f"found {len(files)} images in {directory}: expected {expected} (at least 2 images)")
    images = ImageFiles(files)
    images._load(files[0])
    return _split_single(images, f"CelebA images from {directory}")


# ---------------------------------------------------------------------------------------------


def _check_dir(data_dir, dataset: str, expected: str) -> Path:
    if data_dir is None:
        raise DataError(f"--data-dir is required for dataset {dataset!r}: a folder holding {expected}")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist (dataset {dataset!r} expects {expected})")
    return directory


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> DataSplit:
    """Load one of ``DATASETS`` from local files.

    Args:
        name: "digits" (bundled, ``data_dir`` ignored), "mnist", "cifar10" or "celeba".
        data_dir: the folder holding the data set's files.

    Returns:
        A :class:`DataSplit` (training and held-out images, and a description).

    Raises:
        ValueError: unknown ``name``; :class:`DataError` (a ValueError) for a missing or
            unreadable data directory, naming the files expected.
    """
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "celeba":
        return load_celeba(data_dir)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")
