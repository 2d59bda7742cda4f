"""N:M semi-structured sparsity on linears and 1x1 convs: in every run of M consecutive input weights of an
output row, keep the N largest by magnitude (ties to the lower index).

There is no dense speed-up for N:M on XNNPACK (its kernels are dense; 2:4 acceleration needs sparse tensor
cores), so realization keeps the masked dense layer and says so; the cost model still counts the
non-zero work exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from patterns.errors import PlanError
from patterns.family import Context, Decision, Family, weight_key
from patterns.plan import LayerAssignment

PATTERNS = {"2:4": (2, 4), "1:4": (1, 4)}


def _matrix_view(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        return module.out_channels, module.in_channels
    return None


class NMFamily(Family):
    """N:M sparsity (masks + exact accounting; no dense realization)."""

    name = "nm"
    description = "N:M (2:4) semi-structured sparsity on linears and 1x1 convs (mask only on XNNPACK)"

    def patterns(self) -> tuple[str, ...]:
        return tuple(PATTERNS)

    def applies_to(self, module: nn.Module, *, role: str = "") -> bool:
        shape = _matrix_view(module)
        return shape is not None and shape[1] % 4 == 0

    def decide(self, ctx: Context, layer: str, assignment: LayerAssignment) -> Decision:
        self.check_pattern(layer, assignment)
        module = ctx.module(layer)
        shape = _matrix_view(module)
        n, m = PATTERNS[assignment.pattern]
        if shape is None or shape[1] % m:
            raise PlanError(f"layer '{layer}' cannot take {assignment.pattern} sparsity",
                            hint=f"N:M needs a Linear or 1x1 Conv2d with input features divisible by {m}")
        out_f, in_f = shape
        weight = module.weight.detach().reshape(out_f, in_f // m, m).abs().double()
        # Stable descending sort: equal magnitudes keep the lower index first, so replays are exact.
        order = torch.sort(-weight, dim=-1, stable=True).indices
        keep = torch.zeros_like(weight, dtype=torch.bool)
        keep.scatter_(-1, order[..., :n], True)
        return Decision({weight_key(layer): keep.reshape(module.weight.shape)},
                        note=f"{layer}: {assignment.pattern} has no dense form on XNNPACK; kept as masks")
