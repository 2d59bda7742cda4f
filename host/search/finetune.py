"""Masked fine-tuning and BatchNorm recalibration.

Masks are held fixed: a pruned weight is EXACTLY zero after every optimizer step. Zeroing only the gradient
is not enough (weight decay and SGD momentum still move a weight whose gradient is zero), and re-applying
the mask BEFORE the step (what the reference code does) lets the step regrow it. We zero the gradient after
``backward`` and multiply the weight by its mask after ``optimizer.step()``; both are cheap in-place ops.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from host.search.config import FinetuneConfig
from patterns.masks import MaskSet

__all__ = ["FinetuneConfig", "accuracy", "distillation_loss", "learning_rate", "masked_finetune",
           "recalibrate_bn"]

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def learning_rate(config: FinetuneConfig, position: int, total: int) -> float:
    """The learning rate at step (or epoch) ``position`` of ``total``: ``config.lr`` annealed to 0 on a half
    cosine ("cosine"), or ``config.lr`` throughout ("constant")."""
    if config.schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1 + math.cos(math.pi * position / max(total, 1)))


def _mask_grads_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(grad.dtype))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton-style KL(teacher || student) on temperature-softened logits, scaled by T^2."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
        reduction="batchmean",
    ) * (t * t)


def masked_finetune(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    batches: Batches,
    config: FinetuneConfig = FinetuneConfig(),
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Fine-tune ``model`` in place with ``masks`` held fixed; returns it in eval mode.

    ``batches`` is re-iterated once per epoch (a DataLoader or a list of (x, y) batches).
    """
    if config.distill_alpha > 0 and teacher is None:
        raise ValueError("distill_alpha > 0 needs a teacher model")
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown fine-tuning schedule {config.schedule!r}; use 'cosine' or 'constant'")
    masks = masks if isinstance(masks, MaskSet) else MaskSet(masks)
    masks.apply(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    if teacher is not None:
        teacher.eval()
    per_epoch = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if per_epoch is not None and config.max_batches_per_epoch is not None:
        per_epoch = min(per_epoch, config.max_batches_per_epoch)
    total_steps = config.epochs * per_epoch if per_epoch else config.epochs
    step = 0
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        for i, (x, y) in enumerate(batches):
            if config.max_batches_per_epoch is not None and i >= config.max_batches_per_epoch:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step if per_epoch else epoch, total_steps)
            step += 1
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if config.distill_alpha > 0:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = (1 - config.distill_alpha) * loss + config.distill_alpha * distillation_loss(
                    logits, teacher_logits, config.temperature
                )
            loss.backward()
            _mask_grads_(model, masks)
            optimizer.step()
            # after the step: momentum and weight decay may have moved a pruned weight; put it back to 0.
            masks.apply(model)
            total += float(loss.detach()) * len(y)
            count += len(y)
        logger.info("finetune epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / max(count, 1))
    model.eval()
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, num_batches: int = 8) -> nn.Module:
    """Recompute BatchNorm running statistics on a few training batches (cumulative average); eval mode.

    Pruning shifts every downstream activation distribution, so the dense model's statistics make a
    masked model look far worse than it is; a handful of batches fixes that without any training.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # None = exact cumulative average over the batches we show it
    model.train()
    seen = 0
    for x, _y in batches:
        if seen >= num_batches:
            break
        model(x)
        seen += 1
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    if seen == 0:
        raise ValueError("recalibrate_bn got no batches")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> float:
    """Top-1 accuracy (fraction) of ``model`` over ``batches``."""
    model.eval()
    correct, total = 0, 0
    for x, y in batches:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("accuracy got no samples")
    return correct / total
