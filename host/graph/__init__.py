"""The model graph: prunable layers, dataflow and coupled channel groups, as PyG data for the GNN."""

from host.graph.layers import EDGE_TYPES, KINDS, Edge, LayerInfo, WeightStats
from host.graph.model_graph import ModelGraph, build_model_graph

__all__ = ["EDGE_TYPES", "KINDS", "Edge", "LayerInfo", "ModelGraph", "WeightStats", "build_model_graph"]
