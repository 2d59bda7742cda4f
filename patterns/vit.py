"""Head and hidden-unit patterns for transformer blocks, removed physically.

``headsR`` removes the share R of an attention's heads with the smallest L2 energy over their q/k/v rows
and output-projection columns. It goes on the layer producing the attention's queries (a separate q, or a
fused qkv) or, for an ``nn.MultiheadAttention``, on its out_proj. Heads are found from the traced graph for
any spelling (:mod:`patterns.heads`): the attention op, the reshape into heads and the projection that
consumes the merged heads, never from module or attribute names. A masked head computes zero values, so
its output is exactly zero, as after removal. ``hiddenR`` on an MLP's ``fc1`` removes that share of hidden
units (fc1 rows, fc2 columns); the MLP is duck-typed (``fc1``/``fc2`` linears, as in host.models.vit).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from host.errors import PlanError
from patterns.family import Context, Decision, Family, RealizeState, count_for_ratio, stable_order, weight_key
from patterns.heads import (
    HeadLayout,
    head_energy,
    head_layouts,
    head_masks,
    localize,
    set_module,
    shrink_attention,
)
from patterns.plan import LayerAssignment

HEADS = {"heads25": 0.25, "heads50": 0.5}
HIDDEN = {"hidden25": 0.25, "hidden50": 0.5, "hidden75": 0.75}


def is_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("fc1", "fc2"))


def _mlp_role(model: nn.Module, layer: str) -> str:
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return "mlp" if child == "fc1" and is_mlp(parent) else ""


def layer_roles(model: nn.Module, example_input: torch.Tensor | None = None, *, traced=None) -> dict[str, str]:
    """Every layer with a transformer role: "attention" for the layer a head pattern goes on (an attention
    whose heads can be removed exactly), "mlp" for an MLP's fc1. ``traced`` reuses a
    :class:`host.graph.trace.TracedModel` of ``model``; without ``example_input`` each attention is probed
    with a (2, 5, width) token batch."""
    from patterns.structure import prunable_layers

    roles = {anchor: "attention" for anchor in head_layouts(model, example_input, traced=traced)}
    for name in prunable_layers(model):
        if name not in roles and _mlp_role(model, name):
            roles[name] = "mlp"
    return roles


def role_of(model: nn.Module, layer: str, example_input: torch.Tensor | None = None) -> str:
    """"attention", "mlp" or "" for one layer (see :func:`layer_roles`, which does all layers at once)."""
    return layer_roles(model, example_input).get(layer, "")


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _context_layouts(ctx: Context) -> tuple[dict[str, HeadLayout], dict[str, str]]:
    if ctx not in _LAYOUTS:
        reasons: dict[str, str] = {}
        _LAYOUTS[ctx] = (head_layouts(ctx.model, ctx.example_input, reasons=reasons), reasons)
    return _LAYOUTS[ctx]


class VitFamily(Family):
    """Whole attention heads and MLP hidden units."""

    name = "vit"
    description = "remove whole attention heads (on the q or fused qkv projection) or MLP hidden units (on fc1)"

    def patterns(self) -> tuple[str, ...]:
        return (*HEADS, *HIDDEN)

    def applies_to(self, module: nn.Module, *, role: str = "") -> bool:
        return isinstance(module, nn.Linear) and role in ("attention", "mlp")

    def choices(self, module: nn.Module, *, role: str = "", group=None) -> list[str]:
        if role == "attention":
            return list(HEADS)
        if role == "mlp":
            return list(HIDDEN)
        return []

    def decide(self, ctx: Context, layer: str, assignment: LayerAssignment) -> Decision:
        self.check_pattern(layer, assignment)
        ctx.module(layer)
        parent_name = layer.rpartition(".")[0]
        parent = ctx.model.get_submodule(parent_name) if parent_name else ctx.model
        if assignment.pattern in HEADS:
            layouts, reasons = _context_layouts(ctx)
            if layer not in layouts:
                raise PlanError(f"layer '{layer}' does not produce the queries of an attention whose heads can "
                                f"be removed{_why(layer, layouts, reasons)}",
                                hint="put head patterns on the layer that computes an attention's queries (q or "
                                     "a fused qkv; the out_proj of an nn.MultiheadAttention); `sculpt-host "
                                     "inspect` lists the layers that take them")
            ratio = HEADS[assignment.pattern] if assignment.ratio is None else assignment.ratio
            return self._heads(ctx, layouts[layer], ratio, layer)
        if _mlp_role(ctx.model, layer) != "mlp":
            raise PlanError(f"layer '{layer}' is not the fc1 of an MLP", hint="put hidden patterns on '<block>.mlp.fc1'")
        ratio = HIDDEN[assignment.pattern] if assignment.ratio is None else assignment.ratio
        return self._hidden(parent_name, parent, ratio, layer)

    def _heads(self, ctx: Context, layout: HeadLayout, ratio: float, layer: str) -> Decision:
        heads = layout.heads
        k = count_for_ratio(heads, ratio)
        if k >= heads:
            raise PlanError(f"layer '{layer}': removing {ratio:.0%} of {heads} heads removes all of them",
                            hint="use a smaller share; at least one head must stay")
        if k == 0:
            return Decision({})
        drop = sorted(stable_order(head_energy(ctx.model, layout))[:k])
        keep_heads = [h for h in range(heads) if h not in drop]
        return Decision(head_masks(ctx.model, layout, drop), rewrites=((10, _HeadRewrite(layout, keep_heads).apply),))

    def _hidden(self, prefix: str, mlp: nn.Module, ratio: float, layer: str) -> Decision:
        hidden = mlp.fc1.out_features
        k = count_for_ratio(hidden, ratio)
        if k >= hidden:
            raise PlanError(f"layer '{layer}': removing {ratio:.0%} of {hidden} hidden units removes all",
                            hint="use a smaller share")
        energy = mlp.fc1.weight.detach().double().pow(2).sum(1) + mlp.fc2.weight.detach().double().pow(2).sum(0)
        if mlp.fc1.bias is not None:
            energy += mlp.fc1.bias.detach().double().pow(2)
        drop = sorted(stable_order(energy)[:k])
        masks = _unit_masks(prefix, [("fc1", "out"), ("fc2", "in")], mlp, drop)
        keep = [u for u in range(hidden) if u not in set(drop)]
        return Decision(masks, rewrites=((10, _HiddenRewrite(prefix, keep).apply),))


def _unit_masks(prefix: str, parts: list[tuple[str, str]], parent: nn.Module, units: list[int]) -> dict:
    masks = {}
    index = torch.tensor(units, dtype=torch.long)
    for child, kind in parts:
        linear = getattr(parent, child)
        name = f"{prefix}.{child}" if prefix else child
        weight = torch.ones_like(linear.weight, dtype=torch.bool)
        if kind == "out":
            weight[index] = False
            if linear.bias is not None:
                bias = torch.ones_like(linear.bias, dtype=torch.bool)
                bias[index] = False
                masks[weight_key(name, "bias")] = bias
        else:
            weight[:, index] = False
        masks[weight_key(name)] = weight
    return masks


def _shrink(linear: nn.Linear, index: torch.Tensor, kind: str) -> nn.Linear:
    if kind == "out":
        new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
        new.weight.data = linear.weight.data[index].clone()
        if linear.bias is not None:
            new.bias.data = linear.bias.data[index].clone()
    else:
        new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None)
        new.weight.data = linear.weight.data[:, index].clone()
        if linear.bias is not None:
            new.bias.data = linear.bias.data.clone()
    return new


def _why(layer: str, layouts: dict[str, HeadLayout], reasons: dict[str, str]) -> str:
    for owner, reason in reasons.items():
        if not owner or layer.startswith(f"{owner}."):
            return f" (the attention in '{owner or 'the model'}' offers none: {reason})"
    if layouts:
        return f"; those layers are: {', '.join(sorted(layouts)[:4])}"
    return "; no attention with removable heads was found in the traced graph"


class _HeadRewrite:
    """Shrinks the attention's projections and makes its forward follow (see patterns.heads)."""

    def __init__(self, layout: HeadLayout, keep_heads: list[int]) -> None:
        self.layout = layout
        self.keep_heads = keep_heads

    def apply(self, model: nn.Module, state: RealizeState) -> None:
        owner_name = self.layout.owner
        owner = model.get_submodule(owner_name) if owner_name else model
        local = localize(self.layout)

        def rel(names: dict[str, list[int]]) -> dict[str, list[int]]:
            prefix = f"{owner_name}." if owner_name else ""
            return {name[len(prefix):]: kept for name, kept in names.items() if name.startswith(prefix)}

        kept_out, kept_in = rel(state.kept_out), rel(state.kept_in)
        replacement = shrink_attention(owner, local, self.keep_heads, kept_out, kept_in)
        for local_map, full_map in ((kept_out, state.kept_out), (kept_in, state.kept_in)):
            for name, kept in local_map.items():
                full_map[f"{owner_name}.{name}" if owner_name else name] = kept
        if replacement is not owner:
            set_module(model, owner_name, replacement)
            if self.layout.route == "graph":
                state.notes.append(f"{owner_name}: forward rewritten for {len(self.keep_heads)} heads "
                                   "(its graph sizes the merged heads from its input)")


class _HiddenRewrite:
    def __init__(self, prefix: str, keep: list[int]) -> None:
        self.prefix = prefix
        self.keep = keep

    def apply(self, model: nn.Module, state: RealizeState) -> None:
        mlp = model.get_submodule(self.prefix) if self.prefix else model
        index = torch.tensor(self.keep, dtype=torch.long)
        mlp.fc1 = _shrink(mlp.fc1, index, "out")
        mlp.fc2 = _shrink(mlp.fc2, index, "in")
        state.kept_in[f"{self.prefix}.fc2" if self.prefix else "fc2"] = list(self.keep)
