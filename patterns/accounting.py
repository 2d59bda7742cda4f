"""Exact accounting of the work a (masked or realized) model does.

``macs`` counts multiply-accumulates of Conv2d and Linear layers over NON-ZERO weights only (a 3x3 kernel
keeping one row costs 3 MACs per output pixel per input channel; a dropped filter costs nothing, and the
consumers' weights on its channel are masked too, so downstream work disappears with it); ``params``
counts non-zero parameter entries (BN and LayerNorm included). ``dense_macs`` / ``dense_params`` count
every entry, i.e. what a dense engine such as XNNPACK really executes. An ``nn.MultiheadAttention`` (and
its pruned stand-in, :class:`patterns.attention.PrunedMultiheadAttention`) runs its q/k/v and out projections
through ``F.linear`` on its own parameters, never through a Linear module's forward: they are counted from
its call (q rows over the query's tokens, k and v rows over the key's and value's). Attention's activation x
activation matmuls are not counted (they have no weights). All numbers are per sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from patterns.attention import PrunedMultiheadAttention
from patterns.pattern_conv import PatternConv
from patterns.probe import run_hooked


@dataclass(frozen=True)
class Cost:
    """Per-sample work: non-zero MACs/params and the dense counts an engine without sparsity pays."""

    macs: int
    params: int
    dense_macs: int
    dense_params: int

    def reduction(self, base: Cost, *, dense: bool = False) -> float:
        """Share of ``base``'s MACs removed (0.5 means half)."""
        mine = self.dense_macs if dense else self.macs
        return 1.0 - mine / base.dense_macs if base.dense_macs else 0.0


def _effective(param: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return param.detach() if mask is None else param.detach() * mask.to(param.device)


def count(model: nn.Module, example_input: torch.Tensor, masks: Mapping[str, torch.Tensor] | None = None) -> Cost:
    """Count the non-zero and dense work of ``model`` on ``example_input`` (masks applied virtually)."""
    masks = dict(masks.items()) if masks is not None else {}
    names = {module: name for name, module in model.named_modules()}
    batch = int(example_input.shape[0]) if example_input.dim() > 0 else 1
    totals = {"macs": 0, "dense": 0}

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        name = names[module]
        weight = _effective(module.weight, masks.get(f"{name}.weight" if name else "weight"))
        channels = output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1]
        positions = output.numel() // (batch * channels)
        totals["macs"] += int(torch.count_nonzero(weight)) * positions
        totals["dense"] += weight.numel() * positions

    def pattern_hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        # PatternConv runs its sub-convs' weights through F.conv2d at per-window offsets: count them here.
        positions = output.shape[2] * output.shape[3]
        for conv in module.convs:
            totals["macs"] += int(torch.count_nonzero(conv.weight.detach())) * positions
            totals["dense"] += conv.weight.numel() * positions

    def add(weight: torch.Tensor, positions: int) -> None:
        totals["macs"] += int(torch.count_nonzero(weight)) * positions
        totals["dense"] += weight.numel() * positions

    def attention_hook(module: nn.Module, args, kwargs, _output) -> None:
        name = names[module]
        prefix = f"{name}." if name else ""
        inputs = list(args) + [kwargs[k] for k in ("query", "key", "value")[len(args):] if k in kwargs]
        query, key, value = (inputs + [None] * 3)[:3]
        key = query if key is None else key
        value = key if value is None else value
        tokens = [t.numel() // (t.shape[-1] * batch) for t in (query, key, value)]
        packed = getattr(module, "in_proj_weight", None)
        if packed is not None:
            weight = _effective(packed, masks.get(f"{prefix}in_proj_weight"))
            for part, positions in zip(weight.chunk(3, dim=0), tokens, strict=True):
                add(part, positions)
        else:
            for part, positions in zip(("q", "k", "v"), tokens, strict=True):
                add(_effective(getattr(module, f"{part}_proj_weight"), masks.get(f"{prefix}{part}_proj_weight")),
                    positions)
        add(_effective(module.out_proj.weight, masks.get(f"{prefix}out_proj.weight")), tokens[0])


    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention | PrunedMultiheadAttention)]
    projections = {id(m.out_proj) for m in attention}  # run inside the attention's call, counted there
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear) and id(m) not in projections]
    handles += [m.register_forward_hook(pattern_hook) for m in model.modules() if isinstance(m, PatternConv)]
    handles += [m.register_forward_hook(attention_hook, with_kwargs=True) for m in attention]
    run_hooked(model, example_input, handles)
    params = dense_params = 0
    for name, param in model.named_parameters():
        params += int(torch.count_nonzero(_effective(param, masks.get(name))))
        dense_params += param.numel()
    return Cost(totals["macs"], params, totals["dense"], dense_params)
