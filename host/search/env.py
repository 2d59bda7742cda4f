"""The Gymnasium environment: one step = one complete pruning plan, evaluated.

Observation: the model graph (node features that include each layer's current pattern, typed dataflow
edges) padded to fixed sizes so SB3 can batch it, as a ``spaces.Dict``:

    x            [N_max, F]  float32   node features (zeros on padding)
    edge_index   [2, E_max]  int64     source/target node of each edge (zeros on padding)
    edge_type    [E_max]     int64
    num_edges    [1]         int64     how many edge columns are real
    node_mask    [N_max]     float32   1 for real nodes
    layer_mask   [N_max]     float32   1 for nodes that are prunable layers
    choice_mask  [N_max, K]  float32   1 where choice k is valid for that node (padding: only choice 0)

Action: ``MultiDiscrete([K] * N_max)``, entry i = the choice for node i. Entries of padding and of
non-prunable nodes are ignored. A choice that is invalid for a layer (possible for actions that did not
come from the masked policy, e.g. random sampling) is mapped to the NEAREST valid index, ties towards the
lower index; the vocabulary is ordered from "keep" to the most aggressive pattern, so nearest means "of
similar strength". Coupled groups are resolved by the plan decoder behind ``evaluate`` (see
``host.search.space``).

Episodes have length 1. Each evaluation costs a masked-model accuracy run, an export and a device
measurement (seconds), so we spend every evaluation on a complete plan and let PPO learn a contextual
bandit whose context is the graph. This is what lets one policy carry to another model: the context, not
the step counter, tells it which model it prunes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

logger = logging.getLogger(__name__)

MAX_EDGE_TYPES = 8  # fixed so a saved policy's edge-type embedding fits any model
FEATURE_BOUND = 1e6  # node features are clipped to this; finite bounds keep the space checkable


@dataclass(frozen=True)
class GraphObservation:
    """An unpadded model graph ready for the policy."""

    node_features: np.ndarray  # [N, F] float32
    edge_index: np.ndarray  # [2, E] int64
    edge_type: np.ndarray  # [E] int64
    layer_nodes: np.ndarray  # [L] int64: graph node of each prunable layer, in layer order
    choice_mask: np.ndarray  # [L, K] bool: valid choices of each prunable layer

    @property
    def num_nodes(self) -> int:
        return int(self.node_features.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.node_features.shape[1])

    @property
    def num_choices(self) -> int:
        return int(self.choice_mask.shape[1])


@dataclass(frozen=True)
class Padding:
    """Fixed sizes of the padded observation."""

    max_nodes: int
    max_edges: int

    @classmethod
    def fitting(cls, graph: GraphObservation, multiple: int = 16) -> Padding:
        """The smallest padding, rounded up to ``multiple``, that holds ``graph``."""

        def up(n: int) -> int:
            return max(multiple, -(-n // multiple) * multiple)

        return cls(max_nodes=up(graph.num_nodes), max_edges=up(max(graph.num_edges, 1)))


def observation_space(padding: Padding, feature_dim: int, num_choices: int) -> spaces.Dict:
    """The ``spaces.Dict`` described in the module docstring."""
    n, e, k = padding.max_nodes, padding.max_edges, num_choices
    return spaces.Dict(
        {
            "x": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (n, feature_dim), np.float32),
            "edge_index": spaces.Box(0, n - 1, (2, e), np.int64),
            "edge_type": spaces.Box(0, MAX_EDGE_TYPES - 1, (e,), np.int64),
            "num_edges": spaces.Box(0, e, (1,), np.int64),
            "node_mask": spaces.Box(0.0, 1.0, (n,), np.float32),
            "layer_mask": spaces.Box(0.0, 1.0, (n,), np.float32),
            "choice_mask": spaces.Box(0.0, 1.0, (n, k), np.float32),
        }
    )


def pad_observation(graph: GraphObservation, padding: Padding) -> dict[str, np.ndarray]:
    """Pad ``graph`` into the fixed-size arrays of :func:`observation_space`."""
    n, e, k = graph.num_nodes, graph.num_edges, graph.num_choices
    if n > padding.max_nodes or e > padding.max_edges:
        raise ValueError(
            f"graph with {n} nodes / {e} edges does not fit padding {padding.max_nodes}/{padding.max_edges}"
        )
    if graph.edge_type.size and int(graph.edge_type.max()) >= MAX_EDGE_TYPES:
        raise ValueError(f"edge type {int(graph.edge_type.max())} >= {MAX_EDGE_TYPES}")
    x = np.zeros((padding.max_nodes, graph.feature_dim), np.float32)
    x[:n] = np.clip(graph.node_features, -FEATURE_BOUND, FEATURE_BOUND)
    edge_index = np.zeros((2, padding.max_edges), np.int64)
    edge_index[:, :e] = graph.edge_index
    edge_type = np.zeros(padding.max_edges, np.int64)
    edge_type[:e] = graph.edge_type
    node_mask = np.zeros(padding.max_nodes, np.float32)
    node_mask[:n] = 1.0
    layer_mask = np.zeros(padding.max_nodes, np.float32)
    layer_mask[graph.layer_nodes] = 1.0
    choice_mask = np.zeros((padding.max_nodes, k), np.float32)
    choice_mask[:, 0] = 1.0  # padding and non-layer nodes: a single legal choice, so no entropy, no gradient
    choice_mask[graph.layer_nodes] = graph.choice_mask.astype(np.float32)
    return {
        "x": x,
        "edge_index": edge_index,
        "edge_type": edge_type,
        "num_edges": np.array([e], np.int64),
        "node_mask": node_mask,
        "layer_mask": layer_mask,
        "choice_mask": choice_mask,
    }


def project_choices(raw: np.ndarray, choice_mask: np.ndarray) -> np.ndarray:
    """Map each layer's raw choice to the nearest valid one (ties to the lower index). [L] -> [L]."""
    raw = np.asarray(raw, np.int64)
    out = raw.copy()
    for i, (choice, valid) in enumerate(zip(raw, choice_mask, strict=True)):
        if not valid[choice]:
            candidates = np.flatnonzero(valid)
            if candidates.size == 0:
                raise ValueError(f"layer {i} has no valid choice")
            out[i] = candidates[np.argmin(np.abs(candidates - choice))]
    return out


@dataclass(frozen=True)
class StepOutcome:
    """What evaluating one plan produced: the reward and JSON-able details for ``info``."""

    reward: float
    info: dict[str, Any]


Evaluator = Callable[[np.ndarray], StepOutcome]


class PruningEnv(gym.Env):
    """Length-1 episodes: observe the graph, assign every prunable layer a choice, get the reward."""

    metadata = {"render_modes": []}

    def __init__(self, graph: GraphObservation, evaluate: Evaluator, padding: Padding | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.padding = padding or Padding.fitting(graph)
        self._evaluate = evaluate
        self.observation_space = observation_space(self.padding, graph.feature_dim, graph.num_choices)
        self.action_space = spaces.MultiDiscrete([graph.num_choices] * self.padding.max_nodes)
        self._obs = pad_observation(graph, self.padding)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return {key: value.copy() for key, value in self._obs.items()}, {}

    def layer_choices(self, action: np.ndarray) -> np.ndarray:
        """The valid per-layer choices [L] that ``action`` [N_max] stands for."""
        raw = np.asarray(action, np.int64)[self.graph.layer_nodes]
        return project_choices(raw, self.graph.choice_mask)

    def step(self, action: np.ndarray):
        outcome = self._evaluate(self.layer_choices(action))
        obs = {key: value.copy() for key, value in self._obs.items()}
        return obs, float(outcome.reward), True, False, dict(outcome.info)


BatchEvaluator = Callable[[list[np.ndarray]], list[StepOutcome]]


class BatchedPruningEnv(DummyVecEnv):
    """``n`` copies of :class:`PruningEnv` stepped together: the ``n`` plans of one step are handed to
    ``evaluate_batch`` at once, so they can be evaluated concurrently (a cluster), and each env gets the reward
    of its own plan whatever order the results arrive in. Length-1 episodes, as in :class:`PruningEnv`."""

    def __init__(self, graph: GraphObservation, n: int, evaluate_batch: BatchEvaluator,
                 padding: Padding | None = None) -> None:
        if n < 1:
            raise ValueError("a batched env needs at least one copy")

        def unused(_choices: np.ndarray) -> StepOutcome:
            raise RuntimeError("the batched env evaluates its plans together (step_wait)")

        super().__init__([partial(PruningEnv, graph, unused, padding) for _ in range(n)])
        self._evaluate_batch = evaluate_batch

    def step_wait(self):
        envs: list[PruningEnv] = [env.unwrapped for env in self.envs]  # type: ignore[misc]
        outcomes = self._evaluate_batch([env.layer_choices(a) for env, a in zip(envs, self.actions, strict=True)])
        if len(outcomes) != self.num_envs:
            raise RuntimeError(f"{len(outcomes)} outcomes for {self.num_envs} plans")
        for i, (env, outcome) in enumerate(zip(self.envs, outcomes, strict=True)):
            self.buf_rews[i] = float(outcome.reward)
            self.buf_dones[i] = True
            terminal, _ = env.reset()
            self.buf_infos[i] = {**outcome.info, "TimeLimit.truncated": False, "terminal_observation": terminal}
            obs, self.reset_infos[i] = env.reset()
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), deepcopy(self.buf_infos)
