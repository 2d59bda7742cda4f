"""Node features of the model graph. Deterministic and normalized to roughly [-1, 1]; no random noise.

The structural part is computed once per graph; the pattern part (the layer's current choice from a Plan,
one-hot over ``patterns.registry.PATTERN_VOCAB``, plus the choices it may take) is filled in per plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from host.graph.layers import KINDS, Edge, LayerInfo


def _log2(value: float) -> float:
    return math.log2(value) if value > 0 else 0.0


def structural_feature_names() -> list[str]:
    return ([f"kind_{k}" for k in KINDS]
            + ["kernel_h", "kernel_w", "stride", "groups_log", "in_channels_log", "out_channels_log",
               "in_spatial_log", "out_spatial_log", "macs_share", "params_share", "macs_rel_log",
               "params_rel_log", "depth", "in_degree_log", "out_degree_log", "weight_norm_rel_log",
               "weight_norm_cv", "weight_norm_min_ratio", "weight_norm_max_ratio", "weight_sparsity",
               "group_producers_log", "group_private", "group_root"])


def pattern_feature_names(vocab: Sequence[tuple[str, str]]) -> list[str]:
    return ([f"pattern_{f}:{p}" for f, p in vocab] + ["pattern_ratio"]
            + [f"allowed_{f}:{p}" for f, p in vocab])


def structural_features(layers: Sequence[LayerInfo], edges: Sequence[Edge],
                        group_info: Mapping[str, tuple[int, bool, bool]]) -> torch.Tensor:
    """(num_layers, F) float32 matrix; ``group_info`` maps layer -> (producers in its group, private, is root)."""
    n = len(layers)
    total_macs = sum(layer.macs for layer in layers) or 1
    total_params = sum(layer.params for layer in layers) or 1
    mean_macs, mean_params = total_macs / max(n, 1), total_params / max(n, 1)
    in_degree, out_degree = [0] * n, [0] * n
    for edge in edges:
        out_degree[edge.src] += 1
        in_degree[edge.dst] += 1
    norms = [layer.weight.mean_norm for layer in layers if layer.weight.mean_norm > 0]
    mean_log_norm = sum(math.log2(v) for v in norms) / len(norms) if norms else 0.0
    rows = []
    for i, layer in enumerate(layers):
        kind = [1.0 if layer.kind == k else 0.0 for k in KINDS]
        producers, private, root = group_info.get(layer.name, (1, False, True))
        rows.append(kind + [
            min(layer.kernel[0], 7) / 7, min(layer.kernel[1], 7) / 7,
            min(_log2(max(layer.stride)), 2) / 2,
            _log2(layer.groups) / 10,
            _log2(layer.in_channels) / 12, _log2(layer.out_channels) / 12,
            _log2(layer.in_size[0] * layer.in_size[1]) / 12, _log2(layer.out_size[0] * layer.out_size[1]) / 12,
            layer.macs / total_macs, layer.params / total_params,
            max(-1.0, min(1.0, _log2(layer.macs / mean_macs) / 6)) if layer.macs else -1.0,
            max(-1.0, min(1.0, _log2(layer.params / mean_params) / 6)),
            i / (n - 1) if n > 1 else 0.0,
            _log2(1 + in_degree[i]) / 5, _log2(1 + out_degree[i]) / 5,
            max(-1.0, min(1.0, (_log2(layer.weight.mean_norm) - mean_log_norm) / 4)) if layer.weight.mean_norm else -1.0,
            min(layer.weight.norm_cv, 2.0) / 2, layer.weight.min_ratio, min(layer.weight.max_ratio, 4.0) / 4,
            layer.weight.sparsity,
            _log2(1 + producers) / 5, 1.0 if private else 0.0, 1.0 if root else 0.0,
        ])
    return torch.tensor(rows, dtype=torch.float32).reshape(n, len(structural_feature_names()))


def pattern_features(layers: Sequence[LayerInfo], vocab: Sequence[tuple[str, str]],
                     current: Mapping[str, tuple[int, float]], allowed: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """One-hot of each layer's current pattern (index into ``vocab``, default 0 = keep), its ratio, and a
    multi-hot of the patterns it may take."""
    v = len(vocab)
    out = torch.zeros(len(layers), 2 * v + 1)
    for i, layer in enumerate(layers):
        index, ratio = current.get(layer.name, (0, 0.0))
        out[i, index] = 1.0
        out[i, v] = ratio
        for j in allowed.get(layer.name, (0,)):
            out[i, v + 1 + j] = 1.0
    return out
