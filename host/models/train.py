"""A short, real training routine (SGD + one-cycle LR) and a checkpoint cache keyed by everything that
shapes the weights, so the search and the tests train each baseline once."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from host.data import DatasetSplits, ImageTensorDataset, load_dataset
from host.errors import ConfigError

log = logging.getLogger(__name__)

# Called after each epoch with (epoch index starting at 1, epochs, train loss, val accuracy).
ProgressFn = Callable[[int, int, float, float], None]

_CACHE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults train ResNet-20 on MNIST-5k at 16 px to ~97% val in under a minute on one
    core (5 epochs, one-cycle SGD)."""

    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    seed: int = 0
    # One intra-op thread: these small nets gain little from a second one, and on a busy 2-core machine
    # two threads ran 10x slower (OpenMP spin-waiting), measured 7 s vs 78 s. None keeps torch's setting.
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"bad training config {self}", hint="epochs, batch_size, lr must be positive")


@dataclass(frozen=True)
class TrainResult:
    """What training produced: per-epoch history and the final validation accuracy."""

    val_accuracy: float
    seconds: float
    epochs: int
    train_loss: tuple[float, ...] = field(default_factory=tuple)
    val_history: tuple[float, ...] = field(default_factory=tuple)


def _set_threads(threads: int | None) -> int:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return previous


# Fewer optimizer steps than this and a one-cycle schedule has no room for its warm-up and annealing phases
# (torch's OneCycleLR even divides by zero at exactly 4 steps with pct_start=0.25): keep the LR constant.
_MIN_ONE_CYCLE_STEPS = 8


def _schedule(optimizer: torch.optim.Optimizer, lr: float, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle LR over ``total_steps`` (25% warm-up), or a constant LR for runs too short for one."""
    if total_steps < _MIN_ONE_CYCLE_STEPS:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25)


def train(model: nn.Module, splits: DatasetSplits, config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Train ``model`` in place on ``splits.train``; report accuracy on ``splits.val`` after every epoch.

    The test split is never touched here: it is for the final report only.
    """
    previous_threads = _set_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        n_train = len(splits.train)
        steps_per_epoch = math.ceil(n_train / config.batch_size)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay, nesterov=config.momentum > 0)
        scheduler = _schedule(optimizer, config.lr, config.epochs * steps_per_epoch)
        start = time.perf_counter()
        losses, val_history = [], []
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n_train, generator=generator)
            total, count = 0.0, 0
            for begin in range(0, len(order), config.batch_size):
                batch = order[begin : begin + config.batch_size]
                if len(batch) < 2:  # BatchNorm cannot train on a single sample
                    continue
                inputs, targets = splits.train.batch(batch)
                loss = F.cross_entropy(model(inputs), targets, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(batch)
                count += len(batch)
            losses.append(total / max(count, 1))
            val_history.append(evaluate(model, splits.val))
            log.info("epoch %d/%d loss %.4f val %.4f", epoch, config.epochs, losses[-1], val_history[-1])
            if progress is not None:
                progress(epoch, config.epochs, losses[-1], val_history[-1])
        model.eval()
        return TrainResult(val_accuracy=val_history[-1], seconds=time.perf_counter() - start, epochs=config.epochs,
                           train_loss=tuple(losses), val_history=tuple(val_history))
    finally:
        torch.set_num_threads(previous_threads)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (put in eval mode) on a dataset or a loader of (x, y) batches."""
    model.eval()
    if isinstance(data, ImageTensorDataset):
        batches = (data.batch(slice(i, i + batch_size)) for i in range(0, len(data), batch_size))
    elif isinstance(data, DataLoader):
        batches = iter(data)
    else:
        batches = iter(DataLoader(data, batch_size=batch_size))
    correct, count = 0, 0
    for inputs, targets in batches:
        predictions: Tensor = model(inputs).argmax(dim=1)
        correct += int((predictions == targets).sum())
        count += len(targets)
    if count == 0:
        raise ConfigError("cannot evaluate on an empty dataset", hint="use a larger dataset or a smaller test fraction")
    return correct / count


def checkpoint_key(model_name: str, dataset_name: str, config: TrainConfig, model_kwargs: dict, data_kwargs: dict,
                   fingerprints: dict | None = None) -> str:
    """A short hash of everything that determines the trained weights (``fingerprints``: the architecture's
    parameter shapes and the dataset folder's content, see :func:`get_or_train_checkpoint`)."""
    payload = json.dumps({"v": _CACHE_VERSION, "model": model_name.lower(), "data": dataset_name.lower(),
                          "config": asdict(config), "model_kwargs": model_kwargs, "data_kwargs": data_kwargs,
                          **({"fingerprints": fingerprints} if fingerprints else {})},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def architecture_fingerprint(model: nn.Module) -> str:
    """Hash of the model's class and of every parameter and buffer name, shape and dtype: a user's factory that
    changes its layers gets a new checkpoint, one whose code changed elsewhere keeps its cache entry."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in list(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def folder_fingerprint(root: str | Path | None) -> str | None:
    """Hash of every file's relative path and bytes under ``root`` (None without one): regenerating an image
    folder at the same path must not reuse a checkpoint trained on the old images."""
    if root is None or not Path(root).exists():
        return None
    base = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _safe(name: str) -> str:
    """``timm:lcnet_050`` / ``pkg.mod:build`` as a file name part."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.lower())[:60]


def get_or_train_checkpoint(model_name: str, dataset_name: str, *, cache_dir: str | Path, config: TrainConfig,
                            data_root: str | Path | None = None, data_limit: int | None = None,
                            progress: ProgressFn | None = None, model_args: dict | None = None,
                            **model_kwargs) -> Path:
    """Return the path of a trained state dict for (model, dataset, sizes, config), training it if needed.

    ``model_name`` is any spec :func:`host.models.loader.load_model` takes (zoo, ``timm:NAME``,
    ``torchvision:NAME``, ``package.module:factory``) with its ``model_args``; ``model_kwargs`` are the sizes
    (``image_size``, ``in_channels``, ``width``, ``num_classes``). The dataset is loaded at the same image size
    and channel count with the config's seed. The cache key covers the model's parameter shapes and, for a
    dataset read from a folder, the folder's content. A JSON file next to the checkpoint records the accuracy
    reached and how long training took.
    """
    from host.models.loader import load_model

    image_size = int(model_kwargs.get("image_size", 32))
    channels = int(model_kwargs.get("in_channels", 3))
    data_kwargs = {"root": str(data_root) if data_root else None, "limit": data_limit, "image_size": image_size,
                   "channels": channels, "seed": config.seed}
    splits = None
    if "num_classes" not in model_kwargs:
        splits = load_dataset(dataset_name, **data_kwargs)
    num_classes = model_kwargs.get("num_classes") or splits.num_classes
    kwargs = {**model_kwargs, "num_classes": num_classes, "image_size": image_size, "in_channels": channels}
    torch.manual_seed(config.seed)
    model = load_model(model_name, model_args=model_args, **kwargs).train()
    fingerprints = {"architecture": architecture_fingerprint(model), "data": folder_fingerprint(data_root)}
    key = checkpoint_key(model_name, dataset_name, config, {**model_kwargs, **({"args": model_args} if model_args else {})},
                         data_kwargs, fingerprints)
    cache = Path(cache_dir)
    path = cache / f"{_safe(model_name)}-{dataset_name.lower()}-{key}.pt"
    if path.is_file():
        log.info("using cached checkpoint %s", path)
        return path
    splits = splits or load_dataset(dataset_name, **data_kwargs)
    if splits.num_classes != num_classes:
        raise ConfigError(f"{dataset_name} has {splits.num_classes} classes but num_classes={num_classes}",
                          hint="leave num_classes out to take the dataset's")
    result = train(model, splits, config, progress)
    cache.mkdir(parents=True, exist_ok=True)
    # write then rename so a concurrent or interrupted run never sees half a file
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    meta = {"model": model_name, "model_args": model_args or {}, "dataset": dataset_name, "model_kwargs": kwargs,
            "data": data_kwargs, "fingerprints": fingerprints, "config": asdict(config),
            "val_accuracy": result.val_accuracy, "seconds": round(result.seconds, 2), "val_history": result.val_history}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
    log.info("trained %s on %s to %.2f%% val in %.1f s -> %s", model_name, dataset_name, 100 * result.val_accuracy,
             result.seconds, path)
    return path
