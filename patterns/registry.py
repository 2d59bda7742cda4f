"""The registry of pattern families and the discrete per-layer action vocabulary of the search.

``PATTERN_VOCAB`` is the stable, ordered list of every ``(family, pattern)`` id, starting with the dense
choice ``("keep", "dense")``; the GNN one-hots a layer's current pattern against it and the RL policy's
action space is an index into it (masked per layer by :func:`choices_for`). Append new ids at the end so
trained policies keep their meaning.
"""

from __future__ import annotations

from torch import nn

from patterns.block import BlockFamily
from patterns.channel import ChannelFamily
from patterns.errors import PlanError
from patterns.family import Family
from patterns.kernel import KernelFamily
from patterns.nm import NMFamily
from patterns.structure import CoupledGroup, coupled_groups, prunable_layers
from patterns.vit import VitFamily, layer_roles

KEEP = ("keep", "dense")

_FAMILIES: dict[str, Family] = {f.name: f for f in (KernelFamily(), ChannelFamily(), NMFamily(), BlockFamily(),
                                                     VitFamily())}

PATTERN_VOCAB: tuple[tuple[str, str], ...] = (KEEP,) + tuple(
    (family.name, pattern) for family in _FAMILIES.values() for pattern in family.patterns()
    if pattern not in family.appended_patterns()
) + tuple((family.name, pattern) for family in _FAMILIES.values() for pattern in family.appended_patterns())


def families() -> list[str]:
    """Names of the registered families (not counting the dense ``keep`` choice)."""
    return list(_FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name``; PlanError naming the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise PlanError(f"unknown pattern family '{name}'",
                        hint=f"known families: keep, {', '.join(_FAMILIES)}") from None


def vocab_index(family: str, pattern: str) -> int:
    """Position of ``(family, pattern)`` in :data:`PATTERN_VOCAB`."""
    try:
        return PATTERN_VOCAB.index((family, pattern))
    except ValueError:
        raise PlanError(f"unknown pattern '{family}:{pattern}'",
                        hint="see patterns.registry.PATTERN_VOCAB for the valid ids") from None


def choices_for(module: nn.Module, *, role: str = "", group: CoupledGroup | None = None) -> list[tuple[str, str]]:
    """The discrete actions for one layer: ``keep`` first, then every (family, pattern) that applies.

    ``role`` ("attention" for the layer computing an attention's queries, "mlp" for an MLP's fc1; see
    :func:`patterns.vit.layer_roles`) unlocks the transformer patterns; ``group`` (the layer's coupled group)
    removes choices that would not be exact there. :func:`layer_choices` fills both in for a whole model.
    """
    out = [KEEP]
    for family in _FAMILIES.values():
        out.extend((family.name, pattern) for pattern in family.choices(module, role=role, group=group))
    return out


def layer_choices(model: nn.Module, example_input) -> dict[str, list[tuple[str, str]]]:
    """:func:`choices_for` of every prunable layer of ``model``, with roles and coupling filled in."""

    by_layer: dict[str, CoupledGroup] = {}
    groups = coupled_groups(model, example_input)
    for group in groups:
        for member in group.members:
            if member.kind == "out":
                by_layer.setdefault(member.name, group)
    roles = layer_roles(model, example_input, groups=groups)
    return {name: choices_for(model.get_submodule(name), role=roles.get(name, ""), group=by_layer.get(name))
            for name in prunable_layers(model)}
