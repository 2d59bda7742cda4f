"""Filter/channel pruning across coupled groups, removed physically by torch-pruning.

Applies to Conv2d filters and to Linear output features alike (an MLP's hidden units of any spelling:
``fc1 -> act -> fc2``, ``nn.Sequential`` ``mlp.0/mlp.2``, channels-last convnext MLPs), wherever the
dependency analysis shows the group is exact to remove: not across a barrier (see
:mod:`patterns.structure`), and consumed by at least one layer (a group that reaches the model's output
unconsumed, such as a classifier's logits, keeps its width).

The pattern sets the share of a group's channels that go (``ratio`` overrides it). Channels are ranked by
the L2 norm of every parameter slice the group ties together (producers' filters, BN, consumers' input
weights), smallest first, ties to the lower index. A group that passes through LayerNorms (a transformer's
residual stream, a ConvNeXt stage, as torch-pruning prunes them) is removable too: a LayerNorm mixes its
channels, so the masked model's LayerNorms normalize over the kept channels only (:mod:`patterns.norms`),
which is what the realized, narrower ones compute. A LayerNorm over more than one axis, or one whose axis
cannot be read off its call, keeps the group's width. A group through a grouped conv loses the same count
from each of its blocks, the weakest of each (:mod:`patterns.grouped`).
"""

from __future__ import annotations

import torch
from torch import nn

from patterns.attention import ATTENTION_TYPES, embedding_slices
from patterns.errors import PlanError
from patterns.family import Context, Decision, Family, count_for_ratio, stable_order
from patterns.grouped import balanced_drop, input_energy
from patterns.plan import LayerAssignment
from patterns.structure import CoupledGroup

PATTERNS = {"prune25": 0.25, "prune50": 0.5, "prune75": 0.75}


class ChannelFamily(Family):
    """Remove whole output channels of a Conv2d together with everything coupled to them."""

    name = "channel"
    description = "filter/channel pruning over coupled groups (physical removal with torch-pruning)"

    def patterns(self) -> tuple[str, ...]:
        return tuple(PATTERNS)

    def applies_to(self, module: nn.Module, *, role: str = "") -> bool:
        return (isinstance(module, nn.Conv2d) and module.out_channels > 1) or \
            (isinstance(module, nn.Linear) and module.out_features > 1)

    def choices(self, module: nn.Module, *, role: str = "", group: CoupledGroup | None = None) -> list[str]:
        if not self.applies_to(module, role=role) or (group is not None and _refusal(group)):
            return []
        if group is None and isinstance(module, nn.Linear):
            return []  # a Linear the dependency analysis never reached (nn.MultiheadAttention.out_proj)
        return list(PATTERNS)

    def decide(self, ctx: Context, layer: str, assignment: LayerAssignment) -> Decision:
        self.check_pattern(layer, assignment)
        conv = ctx.module(layer)
        if not self.applies_to(conv):
            raise PlanError(f"layer '{layer}' ({type(conv).__name__}) cannot take channel pruning",
                            hint="channel pruning applies to Conv2d and Linear layers with more than one output")
        tp_group, group = ctx.group(layer)
        refusal = _refusal(group)
        if refusal:
            raise PlanError(f"layer '{layer}': channel pruning is not exact here: {refusal}",
                            hint="keep this layer's width; kernel, head and hidden-unit patterns may still apply")
        ratio = PATTERNS[assignment.pattern] if assignment.ratio is None else assignment.ratio
        n = conv.out_channels if isinstance(conv, nn.Conv2d) else conv.out_features
        k = count_for_ratio(n, ratio)
        multiple = int(dict(assignment.params).get("multiple", 1))
        if multiple < 1:
            raise PlanError(f"layer '{layer}': params.multiple must be a positive integer, got {multiple}",
                            hint='e.g. "params": {"multiple": 8}')
        if multiple > 1 and n > multiple:
            # Kernels tile output channels (XNNPACK: 8/16 wide); keeping a multiple avoids padded tiles.
            keep = max(multiple, min(n, int((n - k) / multiple + 0.5) * multiple))
            k = n - keep
        if k >= n:
            raise PlanError(f"layer '{layer}': removing {ratio:.0%} of its {n} channels deletes all of them",
                            hint="use a ratio below 1 (at least one channel must stay)")
        if k == 0:
            return Decision({})
        norms = _group_norms(ctx, tp_group, n)
        classes = ctx.channel_classes(layer)
        if group.blocks > 1:
            if len(classes) != n:
                raise PlanError(f"layer '{layer}': channel pruning is not exact here: its channels pass a grouped "
                                "conv and come in inseparable sets", hint="keep this layer's width")
            drop = balanced_drop(norms, group.blocks, k)
            if not drop:
                return Decision({})
        elif len(classes) == n:
            drop = sorted(stable_order(norms)[:k])
        else:
            drop = _drop_classes(classes, norms, k)
            if len(drop) >= n:
                raise PlanError(f"layer '{layer}': removing {ratio:.0%} of its {n} channels deletes all of them "
                                f"(they come in {len(classes)} inseparable sets)",
                                hint="use a smaller ratio")
            if not drop:
                return Decision({})
        return Decision(ctx.group_masks(layer, drop), removals=((layer, tuple(drop)),),
                        norms=_kept_norms(ctx, layer, group, drop, n))


def _kept_norms(ctx: Context, layer: str, group: CoupledGroup, drop: list[int],
                n: int) -> dict[str, tuple[int, torch.Tensor]]:
    """{LayerNorm of the group: (its axis, keep-mask)} for dropping ``drop`` of the group's ``n`` channels."""
    names = sorted({m.name for m in group.members if _is_layernorm(ctx.module(m.name))})
    if not names:
        return {}
    axes = ctx.norm_axes(names)
    keep = torch.ones(n, dtype=torch.bool)
    keep[drop] = False
    norms = {}
    for name in names:
        width = ctx.module(name).normalized_shape
        if axes[name] is None or tuple(width) != (n,):
            raise PlanError(f"layer '{layer}': channel pruning is not exact here: its channels pass through the "
                            f"LayerNorm {name} (normalized shape {tuple(width)}), whose channel axis cannot be "
                            "identified", hint="keep this layer's width")
        norms[name] = (axes[name], keep)
    return norms


def _is_layernorm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm)


def _refusal(group: CoupledGroup) -> str:
    """Why the group's channels cannot be removed exactly, or "" (shown by ``sculpt-host inspect``)."""
    if group.barrier:
        return group.barrier
    if not group.consumers:
        return "no layer consumes its channels (they reach the model's output, e.g. logits)"
    return ""


def channel_refusal(group: CoupledGroup | None) -> str:
    """Public view of :func:`_refusal` for the model graph and ``inspect``."""
    return _refusal(group) if group is not None else ""


def _group_norms(ctx: Context, tp_group, n: int) -> torch.Tensor:
    """Per-channel L2 norm over all parameter slices the group ties together."""
    total = torch.zeros(n, dtype=torch.float64)
    for dep, idxs in tp_group:
        module = dep.target.module
        if not isinstance(module, nn.Module) or module not in ctx.names or len(idxs) != n:
            continue  # flatten-expanded consumers index more than n entries: skip them, producers decide
        handler = getattr(dep.handler, "__name__", "")
        index = torch.as_tensor(list(idxs), dtype=torch.long)
        if isinstance(module, ATTENTION_TYPES):
            for pname, axis in embedding_slices(module, "in" if "in_channels" in handler else "out"):
                data = module.get_parameter(pname).detach().double().movedim(axis, 0)
                total += data[index].pow(2).reshape(n, -1).sum(1)
            continue
        for pname, param in module.named_parameters(recurse=False):
            data = param.detach().double()
            if isinstance(module, nn.Conv2d | nn.Linear) and "in_channels" in handler:
                if pname != "weight":
                    continue
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    total += input_energy(module, data)[index]
                else:
                    total += data[:, index].pow(2).transpose(0, 1).flatten(1).sum(1)
            else:
                total += data[index].pow(2).reshape(n, -1).sum(1)
    return total.sqrt()


def _drop_classes(classes: list[list[int]], norms: torch.Tensor, k: int) -> list[int]:
    """Whole channel sets, weakest first (L2 norm over the set), until about ``k`` channels go; at least
    one set always stays."""
    energy = torch.tensor([float(norms[c].pow(2).sum()) for c in [torch.tensor(cls) for cls in classes]])
    drop: list[int] = []
    for i in stable_order(energy)[:len(classes) - 1]:
        if len(drop) + len(classes[i]) / 2 > k:
            break
        drop.extend(classes[i])
    return sorted(drop)
