"""Model structure the families need: which layers are prunable and which channels are coupled.

Coupling comes from torch-pruning's ``DependencyGraph`` (residual adds, concats, depthwise convs, flatten
into a linear, attention reshapes); we never track dependencies by hand.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from host.errors import ModelError

log = logging.getLogger(__name__)

# Element-wise ops in a torch-pruning group that map a zero channel to a zero channel and never mix
# channels; anything else (adds, reshapes, concats) makes a group "shared".
_CHANNEL_LOCAL_OPS = ("Relu", "Hardtanh", "Gelu", "Silu", "Hardswish", "Sigmoid", "Clone", "Dropout",
                      "Mean", "AvgPool", "MaxPool", "AdaptiveAvgPool", "Tanh", "LeakyRelu", "Elu")


@dataclass(frozen=True)
class GroupMember:
    """One module whose channel dimension belongs to a coupled group."""

    name: str
    kind: str  # "out": output channels/features, "in": input channels/features
    module_type: str


@dataclass(frozen=True)
class CoupledGroup:
    """Channels that must be removed together.

    ``root`` is the first prunable layer (Conv2d/Linear producing the channels) in module order; ``private``
    is True when the channels are made by one layer and consumed by plain convs only (no residual add,
    concat or reshape), so a channel permutation can be folded into the consumers' weights.
    """

    root: str
    channels: int
    members: tuple[GroupMember, ...]
    private: bool
    has_layernorm: bool

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.kind == "out" and m.module_type in ("Conv2d", "Linear"))

    @property
    def consumers(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.kind == "in")


def is_prunable(module: nn.Module) -> bool:
    """Conv2d and Linear layers with real weights are the layers plans address."""
    return isinstance(module, nn.Conv2d | nn.Linear)


def prunable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the Conv2d / Linear layers of ``model``, in module order."""
    return [name for name, module in model.named_modules() if name and is_prunable(module)]


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """torch-pruning's DependencyGraph of ``model`` (traced once with ``example_input``)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # Free parameters (class token, position embedding) are reported but never pruned by us.
            warnings.simplefilter("ignore", UserWarning)
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as exc:  # tracing failures come in many types from torch internals
        raise ModelError(f"cannot trace the model to find coupled channels: {type(exc).__name__}: {exc}",
                         hint="the model must run on the example input and be traceable by torch autograd; "
                              "check the input shape") from exc
    finally:
        model.train(was_training)


def _op_name(dep) -> str:
    module = dep.target.module
    if isinstance(module, nn.Module) and not type(module).__name__.startswith("_"):
        return type(module).__name__
    return str(getattr(dep.target, "grad_fn", None) or dep.target.name)


def group_of(dg, module: nn.Module, names: dict[nn.Module, str], idxs: list[int] | None = None):
    """The torch-pruning group of ``module``'s output channels (all channels unless ``idxs``)."""
    import torch_pruning as tp

    handler = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
    n = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    return dg.get_pruning_group(module, handler, idxs=list(range(n)) if idxs is None else list(idxs))


def describe_group(group, names: dict[nn.Module, str], root: str, channels: int) -> CoupledGroup:
    """Turn a torch-pruning group into our plain :class:`CoupledGroup`."""
    members: list[GroupMember] = []
    private = True
    has_layernorm = False
    producers = 0
    for dep, _ in group:
        module = dep.target.module
        handler = getattr(dep.handler, "__name__", str(dep.handler))
        kind = "in" if "in_channels" in handler else "out"
        if isinstance(module, nn.Module) and module in names:
            mtype = type(module).__name__
            members.append(GroupMember(names[module], kind, mtype))
            if isinstance(module, nn.LayerNorm):
                has_layernorm = True
            if kind == "out" and isinstance(module, nn.Conv2d | nn.Linear):
                producers += 1  # a depthwise conv in the group counts too: it breaks privacy
            if kind == "in" and not (isinstance(module, nn.Conv2d) and module.groups == 1):
                private = False
            if not isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                private = False
        else:
            op = _op_name(dep)
            if not any(tag in op for tag in _CHANNEL_LOCAL_OPS):
                private = False
    if producers != 1:
        private = False
    return CoupledGroup(root, channels, tuple(members), private, has_layernorm)


def coupled_groups(model: nn.Module, example_input: torch.Tensor, dg=None) -> list[CoupledGroup]:
    """Every group of coupled output channels of the prunable layers, each reported once (by its root)."""
    names = {module: name for name, module in model.named_modules()}
    dg = dg or build_dependency_graph(model, example_input)
    seen: set[tuple[str, str]] = set()
    groups: list[CoupledGroup] = []
    for name in prunable_layers(model):
        if (name, "out") in seen:
            continue
        module = model.get_submodule(name)
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        group = describe_group(group_of(dg, module, names), names, name, channels)
        for member in group.members:
            if member.kind == "out":
                seen.add((member.name, "out"))
        groups.append(group)
    return groups
