"""Per-layer counts (dense MACs, params) and weight statistics."""

from __future__ import annotations

import math

import torch
from torch import nn

from host.graph.layers import WeightStats


def layer_geometry(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...], batch: int) -> dict:
    """Sizes and dense per-sample MACs of one call of a Conv2d/Linear with the given input/output shapes."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        in_size = tuple(in_shape[-2:]) if len(in_shape) >= 3 else (0, 0)
        out_size = tuple(out_shape[-2:]) if len(out_shape) >= 3 else (0, 0)
        macs = module.out_channels * out_size[0] * out_size[1] * (module.in_channels // module.groups) * kh * kw
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "kernel": (kh, kw),
                "stride": tuple(module.stride), "padding": _padding(module), "groups": module.groups,
                "in_size": in_size, "out_size": out_size, "macs": macs}
    tokens = math.prod(in_shape[:-1]) // max(batch, 1) if len(in_shape) >= 2 else 1
    macs = module.in_features * module.out_features * tokens
    return {"in_channels": module.in_features, "out_channels": module.out_features, "kernel": (1, 1),
            "stride": (1, 1), "padding": (0, 0), "groups": 1, "in_size": (tokens, 1), "out_size": (tokens, 1),
            "macs": macs}


def _padding(module: nn.Conv2d) -> tuple[int, int]:
    if isinstance(module.padding, str):  # "same" / "valid"
        if module.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size, strict=True))  # type: ignore[return-value]
    return tuple(module.padding)  # type: ignore[return-value]


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


@torch.no_grad()
def weight_stats(module: nn.Module) -> WeightStats:
    """Filter-norm statistics of ``module.weight`` (one filter = one output channel)."""
    weight = module.weight.detach().float()
    filters = weight.reshape(weight.shape[0], -1)
    norms = filters.norm(dim=1)
    mean = float(norms.mean())
    if mean <= 0.0:
        return WeightStats(0.0, 0.0, 0.0, 0.0, 1.0)
    return WeightStats(
        mean_norm=mean,
        norm_cv=float(norms.std(unbiased=False)) / mean,
        min_ratio=float(norms.min()) / mean,
        max_ratio=float(norms.max()) / mean,
        sparsity=float((weight == 0).float().mean()),
    )
