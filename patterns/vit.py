"""Head and hidden-unit patterns for transformer blocks, removed physically.

``headsR`` removes the share R of an attention's heads with the smallest L2 energy over their q/k/v rows
and output-projection columns. It goes on the layer producing the attention's queries (a separate q, or a
fused qkv) or, for an ``nn.MultiheadAttention``, on its out_proj. Heads are found from the traced graph for
any spelling (:mod:`patterns.heads`): the attention op, the reshape into heads and the projection that
consumes the merged heads, never from module or attribute names. A masked head computes zero values, so
its output is exactly zero, as after removal. ``hiddenR`` on an MLP's first linear removes that share of
hidden units (its rows, the next linear's columns). An MLP is found from the coupling, not from names: a
Linear whose output features are consumed only by Linear layers, through element-wise ops, and can be
removed exactly (the channel family's test: no LayerNorm, no barrier); the units go through the same
torch-pruning group removal as ``channel:pruneR`` on that layer (ranked by the L2 norm of every slice the
group ties together, which for ``fc1 -> act -> fc2`` is fc1's row and bias and fc2's column).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from patterns.channel import ChannelFamily, channel_refusal
from patterns.errors import PlanError
from patterns.family import (
    Context,
    Decision,
    Family,
    RealizeState,
    count_for_ratio,
    set_submodule,
    stable_order,
)
from patterns.heads import (
    HeadLayout,
    head_energy,
    head_layouts,
    head_masks,
    localize,
    shrink_attention,
)
from patterns.plan import LayerAssignment
from patterns.structure import coupled_groups

HEADS = {"heads25": 0.25, "heads50": 0.5}
HIDDEN = {"hidden25": 0.25, "hidden50": 0.5, "hidden75": 0.75}


def mlp_role(group) -> str:
    """"mlp" when ``group`` (a :class:`patterns.structure.CoupledGroup`) is an MLP's hidden units: one Linear
    producer, only Linear consumers, exactly removable."""

    if group is None or channel_refusal(group):
        return ""
    producers = [m for m in group.members if m.kind == "out" and m.module_type in ("Conv2d", "Linear")]
    consumers = [m for m in group.members if m.kind == "in"]
    if len(producers) == 1 and producers[0].module_type == "Linear" and consumers and \
            all(m.module_type == "Linear" for m in consumers):
        return "mlp"
    return ""


def layer_roles(model: nn.Module, example_input: torch.Tensor | None = None, *, traced=None,
                groups=None) -> dict[str, str]:
    """Every layer with a transformer role: "attention" for the layer a head pattern goes on (an attention
    whose heads can be removed exactly), "mlp" for the first linear of an MLP (see :func:`mlp_role`).
    ``traced`` reuses a :class:`patterns.trace.TracedModel` of ``model`` and ``groups`` its coupled
    groups; without ``example_input`` each attention is probed with a (2, 5, width) token batch and no MLP
    is found (that needs the coupling)."""

    roles = {anchor: "attention" for anchor in head_layouts(model, example_input, traced=traced)}
    if groups is None and example_input is not None:
        groups = coupled_groups(model, example_input)
    for group in groups or ():
        if mlp_role(group) and group.root not in roles:
            roles[group.root] = "mlp"
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
        module = ctx.module(layer)
        group = ctx.group(layer)[1] if isinstance(module, nn.Linear) else None
        if not mlp_role(group):

            why = channel_refusal(group) if group is not None else "it is not a Linear"
            raise PlanError(f"layer '{layer}' is not the first linear of an MLP whose hidden units can be removed"
                            + (f" ({why})" if why else " (its outputs do not feed only linears)"),
                            hint="put hidden patterns on an MLP's first linear (fc1 -> act -> fc2); "
                                 "`sculpt-host inspect` lists the layers that take them")
        ratio = HIDDEN[assignment.pattern] if assignment.ratio is None else assignment.ratio

        return ChannelFamily().decide(ctx, layer, LayerAssignment("channel", "prune50", ratio=ratio))

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
            set_submodule(model, owner_name, replacement)
            if self.layout.route == "graph":
                state.notes.append(f"{owner_name}: forward rewritten for {len(self.keep_heads)} heads "
                                   "(its graph sizes the merged heads from its input)")
