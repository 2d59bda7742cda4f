"""One forward pass of a model in eval mode, without gradients, for hooks that read what it computes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def run_hooked(model: nn.Module, example_input: torch.Tensor, handles: Iterable[RemovableHandle]) -> None:
    """Run ``model`` once on ``example_input`` (eval mode, no grad), then remove ``handles`` and restore the
    model's training mode, whatever the forward raised."""
    handles = list(handles)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
