"""Datasets for training and evaluating models: offline, deterministic, any size and channel count.

``load_dataset(name, ...)`` returns :class:`DatasetSplits` with train/val/test splits chosen by ``seed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from host.data.sources import RawImages, read_cifar10, read_digits, read_image_folder, read_mnist
from host.data.splits import DatasetSplits, ImageTensorDataset, stratified_indices
from host.data.transforms import adapt_images, channel_stats
from host.errors import DataError

log = logging.getLogger(__name__)

DATASETS = ("mnist", "digits", "cifar10", "imagefolder")

__all__ = ["DATASETS", "DatasetInfo", "DatasetSplits", "default_channels", "ImageTensorDataset", "available_datasets", "dataset_info",
           "load_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset without loading it."""

    name: str
    channels: int  # native channel count
    num_classes: int
    native_size: int | None  # native square image size; None when images vary (imagefolder)


_NATIVE = {"mnist": (1, 10, 28), "digits": (1, 10, 8), "cifar10": (3, 10, 32)}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def dataset_info(name: str, *, root: str | Path | None = None) -> DatasetInfo:
    """Channels, classes and native size of a dataset, read cheaply (imagefolder counts class folders)."""
    key = name.lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset '{name}'", hint=f"available datasets: {', '.join(DATASETS)}")
    if key in _NATIVE:
        channels, classes, size = _NATIVE[key]
        return DatasetInfo(key, channels, classes, size)
    if root is None or not Path(root).is_dir():
        raise DataError(f"image folder not found: {root}",
                        hint="pass a folder that holds one sub-folder per class with .png/.jpg images")
    classes = sum(1 for p in Path(root).iterdir() if p.is_dir())
    return DatasetInfo(key, 3, classes, None)


def default_channels(name: str) -> int:
    """The dataset's own channel count, the CLI's --channels default (3 for a folder of images, whose
    images may be grey or colour; 1 for an unknown name, which load_dataset then refuses with a hint)."""
    key = name.lower()
    if key == "imagefolder":
        return 3
    return _NATIVE[key][0] if key in _NATIVE else 1


def load_dataset(name: str = "mnist", *, root: str | Path | None = None, image_size: int = 32, channels: int = 3,
                 seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 limit: int | None = None) -> DatasetSplits:
    """Load a dataset, resize it to ``image_size`` with ``channels`` channels and split it by ``seed``.

    ``limit`` keeps a stratified subset of that many images before splitting (for fast tests and searches).
    """
    key = name.lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset '{name}'", hint=f"available datasets: {', '.join(DATASETS)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"bad split fractions val={val_fraction}, test={test_fraction}",
                        hint="both must be in [0, 1) and sum to less than 1")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}", hint="pass channels=1 or channels=3")
    if limit is not None and limit < 10:
        raise DataError(f"limit={limit} is too small to split", hint="use at least 10 images, or no limit")
    raw = _read(key, root, image_size=image_size, channels=channels)
    images = adapt_images(raw.images, image_size=image_size, channels=channels)
    train_idx, val_idx, test_idx = stratified_indices(raw.labels, seed=seed, fractions=(val_fraction, test_fraction),
                                                      limit=limit)
    labels = torch.from_numpy(raw.labels)
    mean, std = channel_stats(images[train_idx])

    def subset(idx):
        index = torch.from_numpy(idx)
        return ImageTensorDataset(images[index].clone(), labels[index].clone(), mean, std)

    splits = DatasetSplits(name=key, train=subset(train_idx), val=subset(val_idx), test=subset(test_idx),
                           num_classes=len(raw.class_names), input_shape=(channels, image_size, image_size),
                           class_names=raw.class_names, mean=mean, std=std)
    log.info("dataset %s: %d/%d/%d images of shape %s", key, len(splits.train), len(splits.val), len(splits.test),
             splits.input_shape)
    return splits


def _read(key: str, root: str | Path | None, *, image_size: int, channels: int) -> RawImages:
    if key == "mnist":
        return read_mnist()
    if key == "digits":
        return read_digits()
    if key == "cifar10":
        return read_cifar10(root)
    return read_image_folder(root, image_size=image_size, channels=channels)
