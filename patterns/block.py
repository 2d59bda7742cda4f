"""Block sparsity on linears and 1x1 convs, seen as an (out x in) matrix.

``tileB_R`` zeroes the share R of B x B tiles with the smallest L2 norm: there is no dense form for
scattered tiles on XNNPACK, so it stays a mask. ``colsB_R`` zeroes whole column blocks (B consecutive input
features): realization drops those inputs physically and gathers the kept input channels in front of a
smaller dense layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from patterns.errors import PlanError
from patterns.family import (
    Context,
    Decision,
    Family,
    RealizeState,
    count_for_ratio,
    set_submodule,
    stable_order,
    weight_key,
)
from patterns.plan import LayerAssignment

BLOCK = 4
PATTERNS = {"tile4_50": ("tile", 0.5), "tile4_75": ("tile", 0.75), "cols4_50": ("cols", 0.5),
            "cols4_75": ("cols", 0.75)}


def _matrix(module: nn.Module) -> Tensor | None:
    if isinstance(module, nn.Linear):
        return module.weight.detach()
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        return module.weight.detach().flatten(1)
    return None


class InputSelect(nn.Module):
    """Gathers the kept input channels (dim 1 for convs, last dim for linears) before a smaller layer."""

    def __init__(self, layer: nn.Module, index: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("index", index.to(torch.long), persistent=True)
        self.dim = 1 if isinstance(layer, nn.Conv2d) else -1

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(torch.index_select(x, self.dim, self.index))


class BlockFamily(Family):
    """Block-sparse tiles (mask) and column blocks (realized by an input gather)."""

    name = "block"
    description = "block sparsity on linears / 1x1 convs: 4x4 tiles (mask) or input column blocks (realized)"

    def patterns(self) -> tuple[str, ...]:
        return tuple(PATTERNS)

    def applies_to(self, module: nn.Module, *, role: str = "") -> bool:
        matrix = _matrix(module)
        return matrix is not None and matrix.shape[1] % BLOCK == 0 and matrix.shape[1] >= 2 * BLOCK

    def choices(self, module: nn.Module, *, role: str = "", group=None) -> list[str]:
        if not self.applies_to(module, role=role):
            return []
        out_f, in_f = _matrix(module).shape
        return [p for p, (kind, ratio) in PATTERNS.items()
                if (kind == "cols" and count_for_ratio(in_f // BLOCK, ratio) < in_f // BLOCK)
                or (kind == "tile" and out_f % BLOCK == 0)]

    def decide(self, ctx: Context, layer: str, assignment: LayerAssignment) -> Decision:
        self.check_pattern(layer, assignment)
        module = ctx.module(layer)
        kind, default = PATTERNS[assignment.pattern]
        ratio = default if assignment.ratio is None else assignment.ratio
        matrix = _matrix(module)
        if matrix is None or not self.applies_to(module) or (kind == "tile" and matrix.shape[0] % BLOCK):
            raise PlanError(f"layer '{layer}' cannot take block pattern '{assignment.pattern}'",
                            hint=f"block sparsity needs a Linear or 1x1 Conv2d whose input features (and, for "
                                 f"tiles, output features) are multiples of {BLOCK}")
        out_f, in_f = matrix.shape
        energy = matrix.double().pow(2)
        if kind == "tile":
            tiles = energy.reshape(out_f // BLOCK, BLOCK, in_f // BLOCK, BLOCK).sum(dim=(1, 3)).flatten()
            drop = stable_order(tiles)[:count_for_ratio(len(tiles), ratio)]
            keep = torch.ones(len(tiles), dtype=torch.bool)
            keep[drop] = False
            keep = keep.reshape(out_f // BLOCK, 1, in_f // BLOCK, 1).expand(-1, BLOCK, -1, BLOCK)
            mask = keep.reshape(out_f, in_f).reshape(module.weight.shape)
            return Decision({weight_key(layer): mask.clone()},
                            note=f"{layer}: {assignment.pattern} has no dense form on XNNPACK; kept as masks")
        columns = energy.sum(dim=0).reshape(in_f // BLOCK, BLOCK).sum(dim=1)
        n_drop = count_for_ratio(len(columns), ratio)
        if n_drop >= len(columns):
            raise PlanError(f"layer '{layer}': '{assignment.pattern}' with ratio {ratio} removes every input",
                            hint="use a ratio below 1")
        dropped_blocks = set(stable_order(columns)[:n_drop])
        keep_cols = [c for c in range(in_f) if c // BLOCK not in dropped_blocks]
        col_mask = torch.zeros(in_f, dtype=torch.bool)
        col_mask[keep_cols] = True
        mask = col_mask.expand(out_f, in_f).reshape(module.weight.shape).clone()
        return Decision({weight_key(layer): mask}, rewrites=((40, _ColumnRewrite(layer, keep_cols).apply),))


class _ColumnRewrite:
    def __init__(self, layer: str, keep_cols: list[int]) -> None:
        self.layer = layer
        self.keep_cols = keep_cols

    def apply(self, model: nn.Module, state: RealizeState) -> None:
        module = model.get_submodule(self.layer)
        current = state.kept_in.get(self.layer)
        position = {orig: i for i, orig in enumerate(current)} if current is not None else None
        # Inputs already removed upstream (channel pruning) are gone from both sides; keep the rest.
        keep = [position[c] if position else c for c in self.keep_cols if position is None or c in position]
        if not keep:
            # Upstream channel pruning removed every kept column: all remaining inputs have zero weights in
            # the masked model, so one zero column keeps the layer well-formed (its output is the bias).
            keep = [0]
        index = torch.tensor(keep, dtype=torch.long)
        if isinstance(module, nn.Linear):
            new = nn.Linear(len(keep), module.out_features, bias=module.bias is not None)
            new.weight.data = module.weight.data[:, index].clone()
        else:
            new = nn.Conv2d(len(keep), module.out_channels, 1, module.stride, 0, bias=module.bias is not None)
            new.weight.data = module.weight.data[:, index].clone()
        if module.bias is not None:
            new.bias.data = module.bias.data.clone()
        set_submodule(model, self.layer, InputSelect(new, index))
