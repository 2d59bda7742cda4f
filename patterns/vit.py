"""Head and hidden-unit patterns for transformer blocks, removed physically.

``headsR`` on an attention's ``q`` projection removes the share R of heads with the smallest L2 norm over
their q/k/v rows and output-projection columns. ``hiddenR`` on an MLP's ``fc1`` removes that share of
hidden units (fc1 rows, fc2 columns). The attention module is duck-typed: ``q``, ``k``, ``v``, ``proj``
linears and integer ``heads`` / ``head_dim`` attributes used by its forward (as in host.models.vit).
A masked head computes zero queries/keys/values, so its output is exactly zero, as after removal.
"""

from __future__ import annotations

import torch
from torch import nn

from host.errors import PlanError
from patterns.family import Context, Decision, Family, RealizeState, count_for_ratio, stable_order, weight_key
from patterns.plan import LayerAssignment

HEADS = {"heads25": 0.25, "heads50": 0.5}
HIDDEN = {"hidden25": 0.25, "hidden50": 0.5, "hidden75": 0.75}


def is_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q", "k", "v", "proj")) and \
        isinstance(getattr(module, "heads", None), int) and isinstance(getattr(module, "head_dim", None), int)


def is_mlp(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("fc1", "fc2"))


def role_of(model: nn.Module, layer: str) -> str:
    """"attention" for the q projection of an attention module, "mlp" for an MLP's fc1, else ""."""
    parent_name, _, child = layer.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if child == "q" and is_attention(parent):
        return "attention"
    if child == "fc1" and is_mlp(parent):
        return "mlp"
    return ""


class VitFamily(Family):
    """Whole attention heads and MLP hidden units."""

    name = "vit"
    description = "remove whole attention heads (on the q projection) or MLP hidden units (on fc1)"

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
        role = role_of(ctx.model, layer)
        parent_name = layer.rpartition(".")[0]
        parent = ctx.model.get_submodule(parent_name) if parent_name else ctx.model
        if assignment.pattern in HEADS:
            if role != "attention":
                raise PlanError(f"layer '{layer}' is not the q projection of an attention module",
                                hint="put head patterns on '<block>.attn.q'")
            ratio = HEADS[assignment.pattern] if assignment.ratio is None else assignment.ratio
            return self._heads(parent_name, parent, ratio, layer)
        if role != "mlp":
            raise PlanError(f"layer '{layer}' is not the fc1 of an MLP", hint="put hidden patterns on '<block>.mlp.fc1'")
        ratio = HIDDEN[assignment.pattern] if assignment.ratio is None else assignment.ratio
        return self._hidden(parent_name, parent, ratio, layer)

    def _heads(self, prefix: str, attn: nn.Module, ratio: float, layer: str) -> Decision:
        heads, hd = attn.heads, attn.head_dim
        k = count_for_ratio(heads, ratio)
        if k >= heads:
            raise PlanError(f"layer '{layer}': removing {ratio:.0%} of {heads} heads removes all of them",
                            hint="use a smaller share; at least one head must stay")
        energy = torch.zeros(heads, dtype=torch.float64)
        for proj in (attn.q, attn.k, attn.v):
            rows = proj.weight.detach().double().pow(2).sum(1)
            if proj.bias is not None:
                rows = rows + proj.bias.detach().double().pow(2)
            energy += rows.reshape(heads, hd).sum(1)
        energy += attn.proj.weight.detach().double().pow(2).sum(0).reshape(heads, hd).sum(1)
        drop = sorted(stable_order(energy)[:k])
        units = [h * hd + i for h in drop for i in range(hd)]
        masks = _unit_masks(prefix, [("q", "out"), ("k", "out"), ("v", "out"), ("proj", "in")], attn, units)
        keep_heads = [h for h in range(heads) if h not in drop]
        return Decision(masks, rewrites=((10, _HeadRewrite(prefix, keep_heads).apply),))

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


class _HeadRewrite:
    def __init__(self, prefix: str, keep_heads: list[int]) -> None:
        self.prefix = prefix
        self.keep_heads = keep_heads

    def apply(self, model: nn.Module, state: RealizeState) -> None:
        attn = model.get_submodule(self.prefix) if self.prefix else model
        hd = attn.head_dim
        index = torch.tensor([h * hd + i for h in self.keep_heads for i in range(hd)], dtype=torch.long)
        for child in ("q", "k", "v"):
            setattr(attn, child, _shrink(getattr(attn, child), index, "out"))
        attn.proj = _shrink(attn.proj, index, "in")
        state.kept_in[f"{self.prefix}.proj" if self.prefix else "proj"] = index.tolist()
        attn.heads = len(self.keep_heads)


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
