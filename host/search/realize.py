"""Realize a FINE-TUNED masked model under the decisions made on the ORIGINAL weights.

``patterns.realize(model, plan, x)`` decides which filters get which kernel shape from ``model``'s own
weights. After masked fine-tuning those weights have changed (pruned entries are zero, kept ones moved),
so the ranking by filter norm, and with it the decisions of mixed kernel patterns (``rowcol``,
``paper6``), can differ from the ones the masks were trained under: the realized model would then not
equal the fine-tuned masked model (measured: 78% masked -> 59% realized on a ``rowcol`` plan).

:func:`realize_trained` makes the decisions on the base model and performs the realization steps of
``patterns.realization.realize`` on a copy of the trained model. It mirrors that function step for step
(masks, merged channel removals, rewrites in priority order) and should be replaced by a
``weights_from=`` option there once the pattern library offers one.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def realize_trained(base: nn.Module, trained: nn.Module, plan, example_input: torch.Tensor) -> nn.Module:
    """A smaller dense module equal to ``trained`` masked by ``plan``, with ``base``'s decisions."""
    from patterns.family import RealizeState
    from patterns.realization import _merge_removals, _remove_channels, decide, plan_masks

    ctx, decisions = decide(base, plan, example_input)
    masks = plan_masks(decisions)
    removals = _merge_removals(ctx, decisions)
    realized = copy.deepcopy(trained).eval()
    masks.apply(realized)
    state = RealizeState(groups={name: group for name, (_, group) in ctx._groups.items()})
    state.notes.extend(d.note for d in decisions.values() if d.note)
    if removals:
        _remove_channels(realized, removals, state, example_input)
    rewrites = sorted(
        ((priority, index, fn) for index, decision in enumerate(decisions.values()) for priority, fn in decision.rewrites),
        key=lambda item: (item[0], item[1]),
    )
    for _, _, fn in rewrites:
        fn(realized, state)
    for note in state.notes:
        logger.info("realize: %s", note)
    realized.sculpt_notes = list(state.notes)
    return realized
