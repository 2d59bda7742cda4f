"""The search space of one model: its graph as the policy sees it, and choices -> Plan.

Actions index :data:`patterns.registry.PATTERN_VOCAB` (``keep`` first, then each family's patterns
together). A layer's valid choices come from :func:`patterns.registry.layer_choices`, restricted to the
families the search uses (default: kernel, channel, vit — the ones that realize into smaller dense layers;
``nm``, ``block`` and ``kernel:patdnn4`` stay masks on XNNPACK and would only waste device measurements; an int8
search also leaves out the exact per-filter kernel mixes, :func:`excluded_patterns`).

Coupled groups: channel pruning removes channels from a whole coupled group at once, so only the group's
root layer (its first producer) carries channel choices; the other producers of a shared group (e.g. the
convs feeding one residual add) cannot pick a second, conflicting channel ratio — the root's ratio is the
group's ratio. Other families act inside one layer and need no coupling.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

import patterns
from host.errors import PlanError, SearchError
from host.graph import build_model_graph
from host.kinds import Precision
from host.search.env import GraphObservation
from patterns.family import Context
from patterns.kernel import EXACT_MIXES
from patterns.plan import LayerAssignment, Plan
from patterns.realization import decide, plan_masks
from patterns.registry import KEEP, PATTERN_VOCAB

logger = logging.getLogger(__name__)

DEFAULT_FAMILIES = ("kernel", "channel", "vit")
# Patterns with no dense form on XNNPACK (masks only): they can never be faster, so measuring them wastes budget.
MASK_ONLY_PATTERNS = ("kernel:patdnn4",)
# Left out of int8 searches besides: the exact per-filter kernel mixes (patterns.kernel.EXACT_MIXES). In int8 at a
# ~2x MAC cut they run 3x slower than dense int8 on ResNet-20/56 (realize_bench.py --int8) and reach 0.54-0.60x of
# their MAC ratio at 4x that width, where every tile-aligned form reaches 0.72-0.95x; quantizing one takes 90-160 s
# against 20-27 s for other ResNet-20 plans (int8_export_bench.py). Their tiled twin (kernel:paper6_tiled) stays.
INT8_EXCLUDED = tuple(f"kernel:{p}" for p in EXACT_MIXES)


def excluded_patterns(precision: str) -> tuple[str, ...]:
    """The ``family:pattern`` choices a search at ``precision`` (:class:`host.kinds.Precision`) never offers."""
    return MASK_ONLY_PATTERNS + (INT8_EXCLUDED if precision == Precision.INT8 else ())


class SearchSpace:
    """Graph observation, per-layer choice masks and plan decoding for one model."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, families: tuple[str, ...] = DEFAULT_FAMILIES,
                 name: str | None = None, exclude: tuple[str, ...] = MASK_ONLY_PATTERNS) -> None:

        self.model_name = name
        self.vocab_ids: tuple[tuple[str, str], ...] = tuple(PATTERN_VOCAB)
        self.vocab = [f"{f}:{p}" for f, p in self.vocab_ids]
        self.keep_index = self.vocab_ids.index(KEEP)
        self.graph = build_model_graph(model, example_input)
        node_of = {name: i for i, name in enumerate(self.graph.layer_names)}
        choices = self.graph.choices  # patterns.registry.layer_choices, coupling and roles filled in
        followers = set()
        for group in self.graph.groups:
            followers.update(p for p in group.producers if p != group.root)
        self.layer_names = [name for name in choices if name in node_of]
        missing = [name for name in choices if name not in node_of]
        if missing:
            logger.warning("layers without a graph node are left dense: %s", ", ".join(missing))
        if not self.layer_names:
            raise SearchError("the model has no prunable layer the search can address",
                              hint="the search prunes Conv2d and Linear layers")
        allowed = set(families) | {KEEP[0]}
        mask = np.zeros((len(self.layer_names), len(self.vocab_ids)), bool)
        for i, layer in enumerate(self.layer_names):
            for fam, pat in choices[layer]:
                if fam not in allowed or f"{fam}:{pat}" in exclude or (fam == "channel" and layer in followers):
                    continue
                mask[i, self.vocab_ids.index((fam, pat))] = True
            mask[i, self.keep_index] = True
        self.choice_mask = mask
        self.layer_nodes = np.array([node_of[name] for name in self.layer_names], np.int64)
        self.example_input = example_input
        self.graph_model = model
        self._floor: np.ndarray | None = None
        self._cuts: dict[int, float] | None = None
        self._shares: np.ndarray | None = None
        self._context: Context | None = None  # one dependency graph for every counted plan
        self._dense_macs: int | None = None
        self._mac_ratios: dict[bytes, float | None] = {}

    @property
    def num_choices(self) -> int:
        return len(self.vocab_ids)

    def observation(self, plan: Plan | None = None) -> GraphObservation:
        """The graph (with ``plan``'s patterns in the node features) for the policy."""
        data = self.graph.to_pyg(plan)
        edge_type = getattr(data, "edge_type", None)
        if edge_type is None:
            edge_type = torch.zeros(data.edge_index.shape[1], dtype=torch.long)
        return GraphObservation(
            node_features=data.x.detach().float().numpy(),
            edge_index=data.edge_index.detach().long().numpy(),
            edge_type=edge_type.detach().long().numpy(),
            layer_nodes=self.layer_nodes,
            choice_mask=self.choice_mask,
        )

    def decode(self, choices: np.ndarray) -> tuple[Plan, dict[str, str]]:
        """(Plan, {layer: "family:pattern"}) for per-layer choice indices; ``keep`` layers stay out of the plan."""
        choices = np.asarray(choices, np.int64)
        if choices.shape != (len(self.layer_names),):
            raise ValueError(f"expected {len(self.layer_names)} choices, got shape {choices.shape}")
        assignments, names = {}, {}
        for layer, index, valid in zip(self.layer_names, choices, self.choice_mask, strict=True):
            if not valid[index]:
                raise ValueError(f"choice {self.vocab[index]} is not valid for layer {layer}")
            names[layer] = self.vocab[index]
            if index != self.keep_index:
                family, pattern = self.vocab_ids[index]
                assignments[layer] = LayerAssignment(family, pattern)
        return Plan.from_mapping(assignments, model=self.model_name), names

    def encode(self, names: dict[str, str]) -> np.ndarray:
        """Per-layer choice indices for ``{layer: "family:pattern"}`` (a journaled plan's choices; a layer it does not
        name is kept): the inverse of :meth:`decode`'s names."""
        keep = self.vocab[self.keep_index]
        return np.array([self.vocab.index(names.get(layer, keep)) for layer in self.layer_names], np.int64)

    def dense_choices(self) -> np.ndarray:
        return np.full(len(self.layer_names), self.keep_index, np.int64)

    def choice_cuts(self) -> dict[int, float]:
        """{choice index: share of the dense MACs removed when EVERY layer that accepts it takes it}.

        One virtual count per choice (masks are counted, the model is not touched); a uniform plan the
        pattern library refuses is left out. ``keep`` is 0.
        """
        if self._cuts is not None:
            return self._cuts
        cuts = {self.keep_index: 0.0}
        for index in range(self.num_choices):
            if index == self.keep_index or not self.choice_mask[:, index].any():
                continue
            ratio = self.mac_ratio(np.where(self.choice_mask[:, index], index, self.keep_index))
            if ratio is not None:
                cuts[index] = 1.0 - ratio
        self._cuts = cuts
        return cuts

    def mac_ratio(self, choices: np.ndarray) -> float | None:
        """The plan's exact MACs as a fraction of dense, counted on its masks (the model is not touched, and
        the count is the one a realized candidate is scored with); None for a plan the pattern library refuses.

        Unlike :class:`~host.search.costmodel.CostModel`'s per-layer sum, it sees what pruning one layer's
        outputs removes from the layers that read them (coupled channels), which the linear sum gets wrong by
        up to a third of the ratio. It costs a plan decision and a counting forward pass (~20 ms for ResNet-20,
        ~90 ms for MobileNetV2 at 16 px); results are memoized."""
        choices = np.asarray(choices, np.int64)
        key = choices.tobytes()
        if key not in self._mac_ratios:
            if self._context is None:
                self._context = Context(self.graph_model, self.example_input)
                self._dense_macs = max(1, patterns.count(self.graph_model, self.example_input).macs)
            plan, _ = self.decode(choices)
            try:
                _, decisions = decide(self.graph_model, plan, self.example_input, ctx=self._context)
            except PlanError as exc:
                logger.debug("plan %s is invalid: %s", plan, exc)
                self._mac_ratios[key] = None
            else:
                left = patterns.count(self.graph_model, self.example_input, masks=plan_masks(decisions)).macs
                self._mac_ratios[key] = left / self._dense_macs
        return self._mac_ratios[key]

    def layer_shares(self) -> np.ndarray:
        """[L] each prunable layer's share of the model's dense MACs, in layer order (from the model graph)."""
        if self._shares is None:
            total = max(self.graph.total_macs, 1)
            self._shares = np.array([self.graph.layer(name).macs / total for name in self.layer_names])
        return self._shares

    def floor_choices(self) -> np.ndarray:
        """A most aggressive valid plan, used to check that a target is reachable at all.

        Each layer gets the valid choice whose uniform plan removes the most MACs (:meth:`choice_cuts`).
        Cross-layer effects make this approximate, which is fine for a reachability bound.
        """
        if self._floor is not None:
            return self._floor
        cuts = self.choice_cuts()
        ranking = sorted(cuts, key=cuts.get, reverse=True)
        floor = self.dense_choices()
        for i in range(len(self.layer_names)):
            floor[i] = next(j for j in ranking if self.choice_mask[i, j])
        self._floor = floor
        return floor

    def relax(self, choices: np.ndarray, layer: str | None = None) -> np.ndarray | None:
        """``choices`` one step less aggressive, for when they cannot be realized: ``layer`` takes its next
        valid choice in :meth:`choice_cuts` order (keep in the end); without a layer, every layer holding
        the most aggressive choice in use steps down. None when nothing is left to relax (all keep)."""
        cuts = self.choice_cuts()
        ranking = sorted(cuts, key=cuts.get, reverse=True)
        rank = {index: position for position, index in enumerate(ranking)}
        out = np.array(choices, np.int64)
        if layer is not None and layer in self.layer_names:
            rows = [self.layer_names.index(layer)]
        else:
            used = [c for c in out if c != self.keep_index]
            if not used:
                return None
            worst = min(used, key=lambda c: rank.get(int(c), len(ranking)))
            rows = [i for i, c in enumerate(out) if c == worst]
        changed = False
        for i in rows:
            if out[i] == self.keep_index:
                continue
            current = rank.get(int(out[i]), len(ranking))
            # only choices between this one and keep: never to one that cuts less than keep (adds work)
            nxt = next((j for j in ranking[current + 1: rank[self.keep_index]] if self.choice_mask[i, j]),
                       self.keep_index)
            changed = True
            out[i] = nxt
        return out if changed else None
