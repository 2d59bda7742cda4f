"""Realize a FINE-TUNED masked model under the decisions made on the ORIGINAL weights.

``patterns.realize(model, plan, x)`` decides which filters get which kernel shape from ``model``'s own
weights. After masked fine-tuning those weights have changed (pruned entries are zero, kept ones moved),
so the ranking by filter norm, and with it the decisions of mixed kernel patterns (``rowcol``,
``paper6``), can differ from the ones the masks were trained under: the realized model would then not
equal the fine-tuned masked model (measured: 78% masked -> 59% realized on a ``rowcol`` plan). The pattern
library's ``weights_from=`` keeps the decisions on the base model and takes the weights from the trained one.
"""

from __future__ import annotations

import torch
from torch import nn


def realize_trained(base: nn.Module, trained: nn.Module, plan, example_input: torch.Tensor) -> nn.Module:
    """A smaller dense module equal to ``trained`` masked by ``plan``, with ``base``'s decisions."""
    import patterns

    return patterns.realize(base, plan, example_input, weights_from=trained)
