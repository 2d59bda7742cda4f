"""From a Plan to masks and to a smaller dense module.

``decide`` asks each family for its :class:`~patterns.family.Decision` on the ORIGINAL weights.
``realize`` then (1) applies every mask to a copy, (2) removes whole zero channels physically with
torch-pruning, merged per coupled group, and (3) runs the families' rewrites (head/hidden shrinking,
folding of channel orders, kernel sub-convs, input gathers). Each step only deletes entries that are
already zero, so the realized output equals the masked output.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from patterns.attention import ATTENTION_TYPES, install_stand_ins
from patterns.errors import PlanError
from patterns.family import Context, Decision, RealizeState
from patterns.grouped import check_balanced, is_grouped, prune_grouped
from patterns.masks import MaskSet
from patterns.norms import strip
from patterns.plan import Plan
from patterns.registry import KEEP, get_family
from patterns.structure import build_dependency_graph, group_of, prunable_layers

log = logging.getLogger(__name__)


def decide(model: nn.Module, plan: Plan, example_input: torch.Tensor | None,
           ctx: Context | None = None) -> tuple[Context, dict[str, Decision]]:
    """Every layer's decision (validating the plan on the way)."""
    ctx = ctx or Context(model, example_input)
    layers = set(prunable_layers(model))
    decisions: dict[str, Decision] = {}
    for name, assignment in plan:
        if name not in layers:
            ctx.module(name)  # raises the "no such layer" error when the name is unknown
            raise PlanError(f"layer '{name}' is a {type(ctx.module(name)).__name__}, not a prunable layer",
                            hint="plans address Conv2d and Linear layers; see `sculpt-host inspect`")
        if (assignment.family, assignment.pattern) == KEEP:
            continue
        if assignment.family == KEEP[0]:
            raise PlanError(f"layer '{name}': the keep family only has pattern 'dense'", hint='use "dense"')
        decisions[name] = get_family(assignment.family).decide(ctx, name, assignment)
    return ctx, decisions


def plan_masks(decisions: dict[str, Decision]) -> MaskSet:
    masks = MaskSet()
    for decision in decisions.values():
        masks = masks.combine(MaskSet(decision.masks, decision.norms))
    return masks


def apply_masks(model: nn.Module, plan: Plan, example_input: torch.Tensor | None, *,
                context: Context | None = None) -> MaskSet:
    """Compute the plan's masks from ``model``'s weights and zero ``model`` in place (pass a copy).

    ``context`` reuses the structure (dependency graph, groups) of a :class:`Context` built once for a model
    with the same architecture and weights, e.g. the base model when masking many candidate copies of it;
    the decisions are then read from ``context.model``.
    """
    _, decisions = decide(context.model if context is not None else model, plan, example_input, ctx=context)
    masks = plan_masks(decisions)
    masks.apply(model)
    return masks


def validate(plan: Plan, model: nn.Module, example_input: torch.Tensor | None = None) -> None:
    """Raise PlanError naming the layer and what to change when ``plan`` does not fit ``model``.

    Without ``example_input``, checks that need the channel coupling (channel pruning, kernel patterns) are
    limited to names, patterns and layer types.
    """
    for name, assignment in plan:
        if example_input is None and assignment.family in ("channel", "kernel"):
            ctx = Context(model, None)
            family = get_family(assignment.family)
            family.check_pattern(name, assignment)
            family.check_params(name, assignment)
            if not family.applies_to(ctx.module(name)):
                raise PlanError(f"layer '{name}' ({type(ctx.module(name)).__name__}) cannot take "
                                f"'{assignment.key}'", hint="see `sculpt-host inspect` for each layer's choices")
            continue
        decide(model, Plan(((name, assignment),)), example_input)
    if example_input is not None:
        realize(model, plan, example_input, check_only=True)


def _merge_removals(ctx: Context, decisions: dict[str, Decision]) -> list[tuple[str, list[int]]]:
    """Union the channel removals that fall into the same coupled group."""
    merged: dict[tuple[str, ...], tuple[str, set[int]]] = {}
    for decision in decisions.values():
        for layer, idxs in decision.removals:
            group = ctx.group(layer)[1]
            key = tuple(sorted(m.name for m in group.members if m.kind == "out"))
            root, acc = merged.setdefault(key, (layer, set()))
            acc.update(idxs)
            if len(acc) >= group.channels:
                raise PlanError(f"the plan removes all {group.channels} channels coupled to layer '{layer}' "
                                f"(group of {', '.join(group.producers)})",
                                hint="lower the ratios of the assignments on these layers")
    out = []
    for root, acc in merged.values():
        group = ctx.group(root)[1]
        if group.blocks > 1:
            check_balanced(acc, group.channels, group.blocks, f"layer '{root}'")
        out.append((root, sorted(acc)))
    return out


def realize(model: nn.Module, plan: Plan, example_input: torch.Tensor, *, check_only: bool = False,
            weights_from: nn.Module | None = None, context: Context | None = None) -> nn.Module:
    """A smaller dense module computing the same function as ``model`` masked by ``plan``.

    ``model`` is not modified. Patterns without a dense form (N:M, tiles, PatDNN) stay masked dense
    layers; the returned module's ``sculpt_notes`` lists every such fallback and every gather paid.
    ``weights_from`` (same architecture, e.g. the masked fine-tuned model) supplies the weights while the
    decisions (which filters get which shape, which channels go) are still made on ``model``, the base
    the masks were derived from. ``context`` reuses a :class:`Context` built for ``model``.
    """
    ctx, decisions = decide(model, plan, example_input, ctx=context)
    masks = plan_masks(decisions)
    removals = _merge_removals(ctx, decisions)
    if check_only:
        return model
    realized = strip(copy.deepcopy(weights_from if weights_from is not None else model)).eval()
    masks.apply(realized, norms=False)  # its LayerNorms lose the removed channels instead
    state = RealizeState(groups={name: group for name, (_, group) in ctx._groups.items()})
    state.notes.extend(d.note for d in decisions.values() if d.note)
    if removals:
        _remove_channels(realized, removals, state, example_input)
    rewrites = sorted(((priority, index, fn) for index, decision in enumerate(decisions.values())
                       for priority, fn in decision.rewrites), key=lambda item: (item[0], item[1]))
    for _, _, fn in rewrites:
        fn(realized, state)
    for note in state.notes:
        log.info("realize: %s", note)
    realized.sculpt_notes = list(state.notes)
    return realized


def _remove_channels(realized: nn.Module, removals: list[tuple[str, list[int]]], state: RealizeState,
                     example_input: torch.Tensor) -> None:
    # an nn.MultiheadAttention whose embedding narrows cannot change width in place: its stand-in can
    install_stand_ins(realized, {m.name for layer, _ in removals for m in state.groups[layer].members if m.kind == "in"})
    dg = build_dependency_graph(realized, example_input)
    names = {module: name for name, module in realized.named_modules()}
    for layer, idxs in removals:
        tp_group = group_of(dg, realized.get_submodule(layer), names, idxs)
        for dep, dep_idxs in tp_group:
            module = dep.target.module
            if isinstance(module, ATTENTION_TYPES) and module in names and "in_channels" not in \
                    getattr(dep.handler, "__name__", ""):
                module = module.out_proj  # its output channels are out_proj's rows
            if not isinstance(module, nn.Conv2d | nn.Linear) or module not in names:
                continue
            name = names[module]
            handler = getattr(dep.handler, "__name__", "")
            removed = set(int(i) for i in dep_idxs)
            depthwise = isinstance(module, nn.Conv2d) and module.groups != 1 and not is_grouped(module)
            if "in_channels" in handler and not depthwise:
                size = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
                kept = state.kept_in.get(name, list(range(size)))
                state.kept_in[name] = [orig for pos, orig in enumerate(kept) if pos not in removed]
            else:
                size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
                kept = state.kept_out.get(name, list(range(size)))
                state.kept_out[name] = [orig for pos, orig in enumerate(kept) if pos not in removed]
        # torch-pruning narrows a grouped conv as if it were dense: those convs are pruned here instead
        grouped = [(dep, idxs) for dep, idxs in tp_group if is_grouped(dep.target.module)]
        tp_group._group = [item for item in tp_group if not is_grouped(item[0].target.module)]
        if tp_group._group:
            tp_group.prune(record_history=False)
        for dep, idxs in grouped:
            prune_grouped(dep.target.module, idxs, "in" if "in_channels" in getattr(dep.handler, "__name__", "") else "out")
