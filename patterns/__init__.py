"""The pattern library: pruning pattern families, masks, exact MAC/param accounting and realization.

Top-level API (see README "Patterns and plans"):

- :class:`Plan` / :class:`LayerAssignment` — the per-layer choice, plain JSON data.
- :func:`apply_masks` — zero a model copy in place per plan; returns the :class:`MaskSet`.
- :func:`count` — exact non-zero (and dense) MACs and params.
- :func:`realize` — a smaller dense module equal to the masked model.
- :func:`validate` — PlanError naming the layer and the fix.
- registry: :data:`PATTERN_VOCAB`, :func:`families`, :func:`get_family`, :func:`choices_for`,
  :func:`layer_choices`; structure: :func:`prunable_layers`, :func:`coupled_groups`.
"""

from patterns.accounting import Cost, count
from patterns.fusion import fuse_batchnorm
from patterns.masks import MaskSet
from patterns.plan import SCHEMA_VERSION, LayerAssignment, Plan
from patterns.realization import apply_masks, decide, realize, validate
from patterns.registry import PATTERN_VOCAB, choices_for, families, get_family, layer_choices, vocab_index
from patterns.structure import CoupledGroup, coupled_groups, prunable_layers

__all__ = [
    "PATTERN_VOCAB", "SCHEMA_VERSION", "CoupledGroup", "Cost", "LayerAssignment", "MaskSet", "Plan",
    "apply_masks", "choices_for", "count", "coupled_groups", "decide", "families", "fuse_batchnorm", "get_family",
    "layer_choices", "prunable_layers", "realize", "validate", "vocab_index",
]
