"""LayerNorms over pruned channels: what a masked model computes so that it equals the realized one.

A LayerNorm normalizes over its channels, so zeroing a channel (a mask) is not the same as removing it:
the zero still counts in the mean and the variance. A channel group that passes through LayerNorms (a
transformer's residual stream, a ConvNeXt stage) is therefore masked *and* its LayerNorms are told which
channels are kept: a forward hook (:class:`KeptChannels`) recomputes the norm over the kept channels only
and writes zeros elsewhere, which is exactly what the realized model's narrower LayerNorm computes.

The axis a LayerNorm normalizes is read from the traced call, not from its class: ``nn.LayerNorm`` itself
normalizes the last axis; a subclass with its own forward (timm's channels-first ``LayerNorm2d``, which
permutes) is probed once on the example input, trying every axis of the right size against its output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patterns.errors import PlanError
from patterns.probe import run_hooked


class KeptChannels:
    """Forward hook of a LayerNorm in a masked model: normalize over the kept channels of axis ``dim``."""

    def __init__(self, dim: int, keep: torch.Tensor) -> None:
        self.dim = dim
        self.keep = keep.to(torch.bool)
        self.index = torch.nonzero(self.keep).flatten()  # a constant, so the hook exports (torch.export)

    def __call__(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        index = self.index.to(x.device)
        moved = x.movedim(self.dim, -1).index_select(-1, index)
        weight = None if module.weight is None else module.weight.index_select(0, index)
        bias = None if module.bias is None else module.bias.index_select(0, index)
        normed = F.layer_norm(moved, (len(index),), weight, bias, module.eps)
        out = normed.new_zeros(*moved.shape[:-1], self.keep.numel()).index_copy(-1, index, normed)
        return out.movedim(-1, self.dim).to(output.dtype)

    def __deepcopy__(self, memo):  # a hook copied with its model (torch.nn.Module deep copies its hooks)
        return KeptChannels(self.dim, self.keep.clone())


def strip(model: nn.Module) -> nn.Module:
    """Remove every :class:`KeptChannels` hook of ``model`` (a realized model normalizes its own width)."""
    for module in model.modules():
        hooks = module._forward_hooks
        for key in [k for k, hook in hooks.items() if isinstance(hook, KeptChannels)]:
            del hooks[key]
    return model


def restrict(model: nn.Module, norms: dict[str, tuple[int, torch.Tensor]]) -> None:
    """Install (or replace) the kept-channel hook of every LayerNorm in ``norms`` ({name: (axis, keep)})."""
    for name, (dim, keep) in norms.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise PlanError(f"a LayerNorm restriction names '{name}', which the model does not have",
                            hint="apply masks to the model they were computed for") from exc
        hooks = module._forward_hooks
        for key in [k for k, hook in hooks.items() if isinstance(hook, KeptChannels)]:
            del hooks[key]
        module.register_forward_hook(KeptChannels(dim, keep))


def normalized_axes(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, int | None]:
    """{LayerNorm name: the input axis it normalizes, or None when no single axis reproduces its output}."""
    found: dict[str, int | None] = {}

    def probe(name: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            if name in found:
                return  # a norm called twice: the first call decides
            found[name] = _axis(module, args[0], output)
        return hook

    run_hooked(model, example_input, [model.get_submodule(name).register_forward_hook(probe(name)) for name in names])
    return {name: found.get(name) for name in names}


def _axis(module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> int | None:
    shape = tuple(getattr(module, "normalized_shape", ()))
    if len(shape) != 1 or not isinstance(x, torch.Tensor) or x.shape != output.shape:
        return None
    if type(module).forward is nn.LayerNorm.forward:
        return x.dim() - 1
    for dim in range(x.dim()):
        if x.shape[dim] != shape[0]:
            continue
        ref = F.layer_norm(x.movedim(dim, -1), shape, module.weight, module.bias, module.eps).movedim(-1, dim)
        if torch.allclose(ref, output, atol=1e-5, rtol=1e-4):
            return dim
    return None
