"""Plain records of the model graph: prunable layers, dataflow edges and their vocabularies."""

from __future__ import annotations

from dataclasses import dataclass

from patterns.trace import EDGE_TYPES

# Layer kinds, in the order of the one-hot node feature. Append only: trained policies depend on it.
KINDS = ("conv", "depthwise", "grouped", "linear", "attn_q", "attn_k", "attn_v", "attn_out", "attn_qkv", "mlp")


@dataclass(frozen=True)
class WeightStats:
    """Statistics of a layer's weight, per output channel (filter / row).

    Ratios are relative to the mean filter L2 norm so that they compare across layers of any scale.
    """

    mean_norm: float  # mean L2 norm of the filters
    norm_cv: float  # std / mean of the filter norms
    min_ratio: float  # smallest filter norm / mean
    max_ratio: float  # largest filter norm / mean
    sparsity: float  # share of weights that are exactly zero (masked)


@dataclass(frozen=True)
class LayerInfo:
    """One prunable layer (Conv2d or Linear), named by its qualified module name.

    ``in_size``/``out_size`` are (H, W) of a conv's input/output; for a linear they are (tokens, 1), where
    tokens is the number of vectors it maps per sample (1 for a classifier, the sequence length in a ViT).
    ``macs`` and ``params`` are dense counts per sample.
    """

    name: str
    index: int
    kind: str
    module_type: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    macs: int
    params: int
    weight: WeightStats
    calls: int = 1  # how often forward runs it (weight sharing counts several times)

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "name": self.name, "index": self.index, "kind": self.kind, "type": self.module_type,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "kernel": list(self.kernel),
            "stride": list(self.stride), "padding": list(self.padding), "groups": self.groups,
            "in_size": list(self.in_size), "out_size": list(self.out_size), "macs": self.macs,
            "params": self.params, "calls": self.calls,
            "weight": {"mean_norm": self.weight.mean_norm, "norm_cv": self.weight.norm_cv,
                       "min_ratio": self.weight.min_ratio, "max_ratio": self.weight.max_ratio,
                       "sparsity": self.weight.sparsity},
        }


@dataclass(frozen=True)
class Edge:
    """Dataflow from layer ``src`` to layer ``dst`` (indices into ``ModelGraph.layers``) through
    non-prunable ops only."""

    src: int
    dst: int
    type: str

    @property
    def type_id(self) -> int:
        return EDGE_TYPES.index(self.type)
