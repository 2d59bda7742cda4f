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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module: loaded on first use, so that `import patterns.errors` (the error root every host module
# imports) or `patterns.plan` does not import torch and the whole library
_EXPORTS = {
    "Cost": "accounting", "count": "accounting", "fuse_batchnorm": "fusion", "MaskSet": "masks",
    "SCHEMA_VERSION": "plan", "LayerAssignment": "plan", "Plan": "plan",
    "apply_masks": "realization", "decide": "realization", "realize": "realization", "validate": "realization",
    "PATTERN_VOCAB": "registry", "choices_for": "registry", "families": "registry", "get_family": "registry",
    "layer_choices": "registry", "vocab_index": "registry",
    "CoupledGroup": "structure", "coupled_groups": "structure", "prunable_layers": "structure",
}

__all__ = [  # noqa: RUF022 - kept as written in the library's docs
    "PATTERN_VOCAB", "SCHEMA_VERSION", "CoupledGroup", "Cost", "LayerAssignment", "MaskSet", "Plan",
    "apply_masks", "choices_for", "count", "coupled_groups", "decide", "families", "fuse_batchnorm", "get_family",
    "layer_choices", "prunable_layers", "realize", "validate", "vocab_index",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'patterns' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"patterns.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from patterns.accounting import Cost, count
    from patterns.fusion import fuse_batchnorm
    from patterns.masks import MaskSet
    from patterns.plan import SCHEMA_VERSION, LayerAssignment, Plan
    from patterns.realization import apply_masks, decide, realize, validate
    from patterns.registry import PATTERN_VOCAB, choices_for, families, get_family, layer_choices, vocab_index
    from patterns.structure import CoupledGroup, coupled_groups, prunable_layers
