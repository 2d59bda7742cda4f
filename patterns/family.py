"""What every pattern family provides, and the shared context and decision types.

A family turns one layer's :class:`~patterns.plan.LayerAssignment` into a :class:`Decision` computed from
the ORIGINAL weights: boolean keep-masks (for accuracy evaluation and masked fine-tuning, and from which
the exact cost follows), channel removals that torch-pruning performs physically, and rewrites that
replace a layer with a smaller dense form. Realization always starts from the masked model, so a rewrite
only removes entries that are already zero and the realized output equals the masked output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from patterns.attention import ATTENTION_TYPES, embedding_slices
from patterns.errors import PlanError
from patterns.grouped import input_rows
from patterns.norms import normalized_axes
from patterns.plan import LayerAssignment
from patterns.structure import CoupledGroup, build_dependency_graph, group_of, try_group_of

# A rewrite runs on the model copy after channel removals. ``state`` maps layer name -> kept ORIGINAL
# output / input indices so decisions made on the original model can be mapped onto the shrunken one.
Rewrite = Callable[[nn.Module, "RealizeState"], None]


@dataclass
class RealizeState:
    """Bookkeeping shared by the rewrites of one realization."""

    kept_out: dict[str, list[int]] = field(default_factory=dict)
    kept_in: dict[str, list[int]] = field(default_factory=dict)
    groups: dict[str, CoupledGroup] = field(default_factory=dict)  # of the ORIGINAL model, by layer
    reordered: set[tuple[str, ...]] = field(default_factory=set)  # shared groups already given a new order
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """Everything one layer's assignment does.

    ``masks`` maps parameter qualified names to bool keep-masks; ``removals`` lists (producer layer, output
    indices) that torch-pruning removes physically with their whole coupled group; ``rewrites`` are
    (priority, function) pairs run in priority order after the removals; ``norms`` are the LayerNorms the
    removed channels pass through, ``{name: (normalized axis, keep-mask)}`` (:mod:`patterns.norms`).
    """

    masks: dict[str, torch.Tensor]
    removals: tuple[tuple[str, tuple[int, ...]], ...] = ()
    rewrites: tuple[tuple[int, Rewrite], ...] = ()
    note: str = ""
    norms: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)


class Context:
    """The base model plus lazily built structure (dependency graph, coupled groups) for decisions."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor | None) -> None:
        self.model = model
        self.example_input = example_input
        self.names = {module: name for name, module in model.named_modules()}
        self._dg = None
        self._groups: dict[str, tuple[object, CoupledGroup]] = {}
        self._classes: dict[str, list[list[int]]] = {}

    def module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError as exc:
            raise PlanError(f"the plan names layer '{name}', which the model does not have",
                            hint="use a name from `sculpt-host inspect --model NAME` "
                                 "(qualified module names)") from exc

    @property
    def dg(self):
        if self._dg is None:
            if self.example_input is None:
                raise PlanError("this plan needs the model's channel coupling, but no example input was given",
                                hint="pass example_input (a tensor of the model's input shape)")
            self._dg = build_dependency_graph(self.model, self.example_input)
        return self._dg

    def group(self, layer: str) -> tuple[object, CoupledGroup]:
        """torch-pruning group (all channels) and its description for ``layer``'s outputs."""
        if layer not in self._groups:
            module = self.module(layer)
            channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            self._groups[layer] = try_group_of(self.dg, module, self.names, layer, channels)
        return self._groups[layer]

    def norm_axes(self, names: list[str]) -> dict[str, int | None]:
        """{LayerNorm name: the axis it normalizes} (:func:`patterns.norms.normalized_axes`, probed once)."""

        cache = self.__dict__.setdefault("_norm_axes", {})
        missing = [name for name in names if name not in cache]
        if missing:
            if self.example_input is None:
                raise PlanError("this plan needs the model's LayerNorm axes, but no example input was given",
                                hint="pass example_input (a tensor of the model's input shape)")
            cache.update(normalized_axes(self.model, missing, self.example_input))
        return {name: cache[name] for name in names}

    def channel_classes(self, layer: str) -> list[list[int]]:
        """``layer``'s output channels split into the smallest sets that can be removed on their own.

        Usually every channel is its own set. Where a tensor is concatenated with a function of itself
        (a ghost module: ``cat([y, depthwise(y)])`` added to a residual stream), removing channel c of the
        stream also removes c's partner in the other half, and torch-pruning's group for [c] says so: the
        sets are read off those groups, so a ratio never cascades into removing the whole group.
        """
        if layer not in self._classes:
            module = self.module(layer)
            n = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            closure = self._closure(module, [0]) if n > 1 else {0}
            if closure == {0}:
                classes = [[c] for c in range(n)]
            else:
                seen: set[int] = set()
                classes = []
                for c in range(n):
                    if c not in seen:
                        members = sorted(self._closure(module, [c]) | {c})
                        seen.update(members)
                        classes.append(members)
            self._classes[layer] = classes
        return self._classes[layer]

    def _closure(self, module: nn.Module, idxs: list[int]) -> set[int]:
        """Output channels of ``module`` that torch-pruning removes along with ``idxs``."""
        import torch_pruning as tp

        out: set[int] = set()
        for dep, dep_idxs in group_of(self.dg, module, self.names, idxs):
            if dep.target.module is module and dep.handler in (tp.prune_conv_out_channels,
                                                               tp.prune_linear_out_channels,
                                                               tp.prune_depthwise_conv_out_channels):
                out.update(int(i) for i in dep_idxs)
        return out

    def group_masks(self, layer: str, idxs: list[int]) -> dict[str, torch.Tensor]:
        """Keep-masks that zero output channels ``idxs`` of ``layer`` across its whole coupled group."""
        tp_group = group_of(self.dg, self.module(layer), self.names, idxs)
        masks: dict[str, torch.Tensor] = {}
        params = {id(p): name for name, p in self.model.named_parameters()}
        for dep, dep_idxs in tp_group:
            module = dep.target.module
            if isinstance(module, nn.Parameter) and id(module) in params:
                # a bare parameter on the channels (a ViT's class token and position embedding), pruned
                # by torch-pruning along its pruning axis
                mask = torch.ones_like(module, dtype=torch.bool)
                mask.index_fill_(dep.target.pruning_dim, torch.as_tensor(list(dep_idxs), dtype=torch.long), False)
                key = params[id(module)]
                masks[key] = masks[key] & mask if key in masks else mask
                continue
            if not isinstance(module, nn.Module) or module not in self.names:
                continue
            name = self.names[module]
            handler = getattr(dep.handler, "__name__", "")
            index = torch.as_tensor(list(dep_idxs), dtype=torch.long)
            if isinstance(module, ATTENTION_TYPES):  # its q/k/v columns in, its out_proj rows out
                for pname, axis in embedding_slices(module, "in" if "in_channels" in handler else "out"):
                    param = module.get_parameter(pname)
                    mask = torch.ones_like(param, dtype=torch.bool)
                    mask.index_fill_(axis, index, False)
                    key = f"{name}.{pname}" if name else pname
                    masks[key] = masks[key] & mask if key in masks else mask
                continue
            for pname, param in module.named_parameters(recurse=False):
                mask = torch.ones_like(param, dtype=torch.bool)
                if isinstance(module, nn.Conv2d | nn.Linear) and "in_channels" in handler:
                    if pname != "weight":
                        continue
                    if isinstance(module, nn.Conv2d) and module.groups != 1:
                        for c in index.tolist():  # input channel c: one column of its group's filters
                            rows, col = input_rows(module, c)
                            mask[rows, col] = False
                    else:
                        mask[:, index] = False
                else:
                    mask[index] = False
                key = f"{name}.{pname}" if name else pname
                masks[key] = masks[key] & mask if key in masks else mask
        return masks


class Family(ABC):
    """A pattern family: one module per family, registered in :mod:`patterns.registry`."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def patterns(self) -> tuple[str, ...]:
        """Every pattern id of this family, in a stable order."""

    def appended_patterns(self) -> tuple[str, ...]:
        """Patterns added after the vocabulary was first fixed (a suffix of :meth:`patterns`).

        :data:`patterns.registry.PATTERN_VOCAB` lists them after every family's original patterns, so the
        indices that trained policies and saved observations use never move.
        """
        return ()

    @abstractmethod
    def applies_to(self, module: nn.Module, *, role: str = "") -> bool:
        """Whether the family can act on ``module`` (``role``: "attention" / "mlp" for ViT sub-layers)."""

    def choices(self, module: nn.Module, *, role: str = "", group: CoupledGroup | None = None) -> list[str]:
        """Patterns offered for this module (default: all, when the family applies)."""
        return list(self.patterns()) if self.applies_to(module, role=role) else []

    @abstractmethod
    def decide(self, ctx: Context, layer: str, assignment: LayerAssignment) -> Decision:
        """Masks, removals and rewrites for ``layer`` under ``assignment`` (raise PlanError when invalid)."""

    def check_params(self, layer: str, assignment: LayerAssignment) -> None:
        """Raise PlanError when ``assignment.params`` are invalid for this family (default: accept any)."""
        return None

    def check_pattern(self, layer: str, assignment: LayerAssignment) -> None:
        if assignment.pattern not in self.patterns():
            raise PlanError(f"layer '{layer}': family '{self.name}' has no pattern '{assignment.pattern}'",
                            hint=f"patterns of '{self.name}': {', '.join(self.patterns())}")


def weight_key(layer: str, pname: str = "weight") -> str:
    return f"{layer}.{pname}" if layer else pname


def stable_order(values: torch.Tensor) -> list[int]:
    """Indices sorting ``values`` ascending; ties go to the lower index, so plans replay bit for bit."""
    return torch.sort(values.detach().double(), stable=True).indices.tolist()


def count_for_ratio(total: int, ratio: float) -> int:
    """How many of ``total`` items a share ``ratio`` selects (round half up, deterministic)."""
    return int(ratio * total + 0.5 + 1e-9)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted module path ``name`` of ``model`` (how a rewrite replaces a layer)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
