"""Small hand-written graphs for env/policy unit tests (the real model graphs are used in integration)."""

from __future__ import annotations

import numpy as np

from host.search.env import GraphObservation


def chain_graph(num_nodes: int, k: int = 6, feature_dim: int = 10, seed: int = 0) -> GraphObservation:
    """A chain with a skip edge; every second node is a prunable layer; layer 0 forbids choices >= 3."""
    rng = np.random.default_rng(seed)
    src = list(range(num_nodes - 1)) + [0]
    dst = list(range(1, num_nodes)) + [num_nodes - 1]
    types = [0] * (num_nodes - 1) + [1]
    layers = np.arange(0, num_nodes, 2)
    choice_mask = np.ones((len(layers), k), bool)
    choice_mask[0, 3:] = False
    return GraphObservation(
        node_features=rng.normal(size=(num_nodes, feature_dim)).astype(np.float32),
        edge_index=np.array([src, dst], np.int64),
        edge_type=np.array(types, np.int64),
        layer_nodes=layers.astype(np.int64),
        choice_mask=choice_mask,
    )
