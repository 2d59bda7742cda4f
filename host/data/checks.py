"""Warnings for data that cannot support what is asked of it: a split too small to rank candidates, a batch
larger than the training set, a model that learned nothing. Said in the summary and the report, never silent."""

from __future__ import annotations


def data_warnings(splits, batch_size: int, val_accuracy: float | None = None) -> list[str]:
    """What makes a training run or a search on ``splits`` unreliable, in words (empty when nothing does)."""
    out = []
    chance = 1 / max(splits.num_classes, 1)
    if len(splits.train) < batch_size:
        out.append(f"the training split has {len(splits.train)} images, fewer than one batch of {batch_size}: "
                   "every epoch is a single step (use a smaller --batch-size or more data)")
    if len(splits.val) < 10 * splits.num_classes:
        out.append(f"the validation split has only {len(splits.val)} images for {splits.num_classes} classes: "
                   "accuracies that differ by less than a few points cannot be told apart")
    if val_accuracy is not None and val_accuracy < chance + 0.1 * (1 - chance):
        out.append(f"validation accuracy {val_accuracy:.1%} is near chance ({chance:.1%}): the model has not "
                   "learned the task (more epochs, more data, or check the labels)")
    return out
