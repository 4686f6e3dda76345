"""Data loaders of the model package (python/data.py): formats, splits and error messages.

The writers of tiny data sets (IDX files, a CIFAR-10 pickle batch, a folder of images) are in
tests/conftest.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from python.data import (
    CIFAR_TEST_FILE,
    DataError,
    holdout_split,
    iterate_batches,
    load_dataset,
    read_idx,
)

from conftest import idx_bytes, write_cifar, write_image_folder, write_mnist

# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------


def test_digits_are_bundled_scaled_and_resized():
    data = load_dataset("digits")
    assert (len(data.train), len(data.test)) == (1617, 180)
    assert data.image_shape == (1, 16, 16)
    x = data.train.batch(torch.arange(10))
    assert x.dtype == torch.float32 and x.shape == (10, 1, 16, 16)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert data.train.labels.shape == (1617,) and set(data.train.labels.tolist()) == set(range(10))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_idx_single_file_is_padded_and_split(tmp_path, gz):
    images = write_mnist(tmp_path, n=20, gz=gz)
    data = load_dataset("mnist", tmp_path)
    assert (len(data.train), len(data.test)) == (18, 2)  # 10% held out
    assert data.image_shape == (1, 32, 32)
    train_idx, _ = holdout_split(20)
    x = data.train.batch(torch.arange(len(data.train)))
    assert torch.equal(x[:, :, 2:30, 2:30], torch.from_numpy(images[train_idx.numpy()]).unsqueeze(1).float() / 255)
    assert x[:, :, :2].abs().sum() == 0 and x[:, :, :, 30:].abs().sum() == 0  # zero padding
    assert data.train.labels is not None and data.train.labels.dtype == torch.int64


def test_mnist_train_and_test_files_give_the_official_split(tmp_path):
    write_mnist(tmp_path, n=7, split="train")
    write_mnist(tmp_path, n=3, split="t10k", gz=False, labels=False)
    data = load_dataset("mnist", tmp_path)
    assert (len(data.train), len(data.test)) == (7, 3)
    assert data.test.labels is None


def test_cifar_pickle_batch(tmp_path):
    raw = write_cifar(tmp_path / "cifar-10-batches-py", n=10)
    data = load_dataset("cifar10", tmp_path)  # the standard subfolder is found
    assert (len(data.train), len(data.test)) == (9, 1) and data.image_shape == (3, 32, 32)
    train_idx, _ = holdout_split(10)
    expected = torch.from_numpy(raw[train_idx.numpy()].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.equal(data.train.batch(torch.arange(9)), expected)


def test_cifar_with_test_batch(tmp_path):
    write_cifar(tmp_path, n=6)
    write_cifar(tmp_path, n=4, name=CIFAR_TEST_FILE, seed=1)
    data = load_dataset("cifar10", tmp_path)
    assert (len(data.train), len(data.test)) == (6, 4)


def test_image_folder_is_cropped_and_resized(tmp_path):
    write_image_folder(tmp_path, n=4)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_dataset("celeba", tmp_path)
    assert (len(data.train), len(data.test)) == (3, 1) and data.image_shape == (3, 64, 64)
    batches = list(iterate_batches(data.train, [torch.tensor([0, 1]), torch.tensor([2])]))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 64, 64), (1, 3, 64, 64)]
    assert 0 <= batches[0].min() and batches[0].max() <= 1 and data.train.labels is None


def test_holdout_split_is_fixed_and_disjoint():
    train, test = holdout_split(100)
    train2, test2 = holdout_split(100)
    assert torch.equal(train, train2) and torch.equal(test, test2)
    assert len(test) == 10 and len(set(train.tolist()) | set(test.tolist())) == 100


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,expected", [
    ("mnist", "t10k-images-idx3-ubyte"),
    ("cifar10", "data_batch_1"),
    ("celeba", "jpg"),
])
def test_missing_data_dir_names_the_files_expected(tmp_path, dataset, expected):
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset(dataset, tmp_path / "nowhere")
    assert expected in str(info.value)
    with pytest.raises(DataError, match="--data-dir is required"):
        load_dataset(dataset, None)
    with pytest.raises(DataError) as info:  # an empty folder
        load_dataset(dataset, tmp_path)
    assert expected in str(info.value)


def test_corrupt_idx_files(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="cannot read IDX file .*t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    truncated = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-10]
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(truncated)
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="bad magic number 12345678"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte")


def test_mnist_wrong_image_size_and_label_count(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 16, 16), np.uint8)))
    with pytest.raises(DataError, match="must hold 28x28 images"):
        load_dataset("mnist", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="labels for 4 images"):
        load_dataset("mnist", tmp_path)


def test_corrupt_cifar_batch(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch .*data_batch_1"):
        load_dataset("cifar10", tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load_dataset("cifar10", tmp_path)


def test_unreadable_image_is_named(tmp_path):
    write_image_folder(tmp_path, n=3)
    (tmp_path / "000000.jpg").write_bytes(b"not a jpeg")  # sorts first: checked when loading
    with pytest.raises(DataError, match="cannot read image .*000000.jpg"):
        load_dataset("celeba", tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of digits, mnist, cifar10, celeba; got 'svhn'"):
        load_dataset("svhn")
