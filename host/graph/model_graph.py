"""The ModelGraph: a model's prunable layers, the dataflow between them and its coupled channel groups,
convertible to a ``torch_geometric.data.Data`` for the GNN policy."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from host.errors import ModelError, PlanError
from host.graph.features import (
    pattern_feature_names,
    pattern_features,
    structural_feature_names,
    structural_features,
)
from host.graph.layers import EDGE_TYPES, Edge, LayerInfo
from host.graph.stats import layer_geometry, param_count, weight_stats
from patterns.channel import channel_refusal
from patterns.registry import PATTERN_VOCAB, choices_for
from patterns.structure import build_dependency_graph, coupled_groups, prunable_layers
from patterns.trace import TracedModel, trace_model
from patterns.vit import layer_roles

if TYPE_CHECKING:
    from torch_geometric.data import Data

    from patterns.plan import Plan
    from patterns.structure import CoupledGroup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelGraph:
    """Prunable layers (nodes), dataflow edges and coupled groups of one model at one input shape.

    ``choices`` maps each layer to the (family, pattern) ids it may take (``patterns.registry``), ``vocab``
    is the global pattern vocabulary those ids index. Build it with :func:`build_model_graph`.
    """

    layers: tuple[LayerInfo, ...]
    edges: tuple[Edge, ...]
    groups: tuple[CoupledGroup, ...]
    choices: dict[str, tuple[tuple[str, str], ...]]
    vocab: tuple[tuple[str, str], ...]
    input_shape: tuple[int, ...]
    total_params: int
    tracer: str  # "fx" (symbolic tracing) or "export" (torch.export fallback)
    _structural: torch.Tensor = field(repr=False, compare=False)

    @property
    def total_macs(self) -> int:
        """Dense MACs per sample of all prunable layers (the work pruning can remove)."""
        return sum(layer.macs for layer in self.layers)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def feature_names(self) -> list[str]:
        """Names of the columns of ``to_pyg().x``."""
        return structural_feature_names() + pattern_feature_names(self.vocab)

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name`` (KeyError if it is not a prunable layer of the model)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def group_of(self, name: str) -> CoupledGroup | None:
        """The coupled group whose channels ``name`` produces (None for a layer in no group)."""
        for group in self.groups:
            if any(m.name == name and m.kind == "out" for m in group.members):
                return group
        return None

    @staticmethod
    def channel_refusal(group: CoupledGroup) -> str:
        """Why ``group``'s channels get no channel choices ("" when they do): a coupling barrier (a reshape that splits the channel axis, a construct torch-pruning cannot map), or no
        consumer (logits)."""

        return channel_refusal(group)

    def to_pyg(self, plan: Plan | None = None) -> Data:
        """A ``torch_geometric.data.Data`` with ``x`` (num_layers x len(feature_names)), ``edge_index``
        (dataflow direction) and ``edge_type`` (index into ``EDGE_TYPES``). ``plan`` sets the pattern
        one-hot; without it every layer is "keep"."""
        from torch_geometric.data import Data

        current = self._plan_indices(plan)
        allowed = {name: [self.vocab.index(c) for c in picks if c in self.vocab] for name, picks in self.choices.items()}
        x = torch.cat([self._structural, pattern_features(self.layers, self.vocab, current, allowed)], dim=1)
        if self.edges:
            edge_index = torch.tensor([[e.src for e in self.edges], [e.dst for e in self.edges]], dtype=torch.long)
            edge_type = torch.tensor([e.type_id for e in self.edges], dtype=torch.long)
        else:
            edge_index = torch.zeros(2, 0, dtype=torch.long)
            edge_type = torch.zeros(0, dtype=torch.long)
        return Data(x=x, edge_index=edge_index, edge_type=edge_type, num_nodes=len(self.layers))

    def _plan_indices(self, plan: Plan | None) -> dict[str, tuple[int, float]]:
        if plan is None:
            return {}
        names = set(self.layer_names)
        unknown = sorted(name for name, _ in plan if name not in names)
        if unknown:
            raise PlanError(f"the plan names layers that are not in the model: {', '.join(unknown[:5])}",
                            hint=f"prunable layers are e.g. {', '.join(self.layer_names[:4])}; "
                                 "run `sculpt-host inspect` to list them")
        out = {}
        for name, assignment in plan:
            key = (assignment.family, assignment.pattern)
            if key not in self.vocab:
                raise PlanError(f"layer '{name}': unknown pattern '{assignment.family}:{assignment.pattern}'",
                                hint="see `sculpt-host inspect` for the patterns each layer may take")
            out[name] = (self.vocab.index(key), float(assignment.ratio or 0.0))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (used by ``sculpt-host inspect --json``)."""
        return {
            "input_shape": list(self.input_shape),
            "tracer": self.tracer,
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "layers": [dict(layer.to_dict(), choices=[f"{f}:{p}" for f, p in self.choices.get(layer.name, ())])
                       for layer in self.layers],
            "edges": [{"src": self.layers[e.src].name, "dst": self.layers[e.dst].name, "type": e.type}
                      for e in self.edges],
            "groups": [{"root": g.root, "channels": g.channels, "private": g.private,
                        "producers": list(g.producers), "consumers": list(g.consumers),
                        "channel_pruning": not self.channel_refusal(g), "why_not": self.channel_refusal(g)}
                       for g in self.groups],
            "edge_types": list(EDGE_TYPES),
        }


def _kind(module: nn.Module, roles: set[str]) -> str:
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "conv"
        return "depthwise" if module.groups == module.in_channels else "grouped"
    projections = roles & {"q", "k", "v"}
    if len(projections) > 1:
        return "attn_qkv"
    if projections:
        return f"attn_{projections.pop()}"
    if "out" in roles:
        return "attn_out"
    return "linear"


def build_model_graph(model: nn.Module, example_input: torch.Tensor) -> ModelGraph:
    """Trace ``model`` on ``example_input`` into a :class:`ModelGraph`.

    The model runs once in eval mode (so BatchNorm statistics do not move) on one intra-op thread, and
    gets its train/eval flags (and torch its thread count) back afterwards. Raises ModelError when the model cannot be traced or has no Conv2d/Linear layer.
    """

    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}", hint="pass the model object")
    names = prunable_layers(model)
    if not names:
        raise ModelError("the model has no Conv2d or Linear layer to prune",
                         hint="a .pt2 ExportedProgram has its layers flattened into ops: load the model from "
                              "Python instead ('package.module:factory')")
    modes = {module: module.training for module in model.modules()}
    threads = torch.get_num_threads()
    work = model.eval()
    try:
        # The one forward pass is tiny (batch 1); on a busy 2-core machine two OpenMP threads made it ~20x
        # slower (ResNet-110: 6 s vs 0.28 s, benchmarks/graph_bench.py), one thread is never much slower.
        torch.set_num_threads(1)
        return _build(work, example_input, names)
    finally:
        torch.set_num_threads(threads)
        for module, training in modes.items():
            module.training = training


def _build(work: nn.Module, example_input: torch.Tensor, names: list[str]) -> ModelGraph:

    dependency: dict[str, object] = {}

    def forward_once() -> None:
        # torch-pruning's DependencyGraph runs the model once; our shape hooks ride along on that pass
        dependency["graph"] = build_dependency_graph(work, example_input)

    traced = trace_model(work, example_input, names, run_forward=forward_once)
    batch = int(example_input.shape[0]) if example_input.ndim else 1
    layers = _layers(work, traced, names, batch)
    index = {layer.name: layer.index for layer in layers}
    edges = [Edge(index[a], index[b], kind) for (a, b), kind in sorted(traced.edges.items(),
                                                                        key=lambda item: (index[item[0][0]], index[item[0][1]]))]
    groups = tuple(coupled_groups(work, example_input, dg=dependency["graph"]))
    group_info, group_by_layer = {}, {}
    for group in groups:
        producers = group.producers
        for name in producers:
            group_by_layer.setdefault(name, group)
            group_info.setdefault(name, (len(producers), group.private, name == group.root))
    roles = layer_roles(work, example_input, traced=traced, groups=groups)
    choices = {name: tuple(choices_for(work.get_submodule(name), role=roles.get(name, ""),
                                       group=group_by_layer.get(name))) for name in names}
    structural = structural_features(layers, edges, group_info)
    return ModelGraph(layers=tuple(layers), edges=tuple(edges), groups=groups, choices=choices,
                      vocab=tuple(PATTERN_VOCAB), input_shape=tuple(example_input.shape[1:]),
                      total_params=sum(p.numel() for p in work.parameters()), tracer=traced.tracer,
                      _structural=structural)


def _layers(model: nn.Module, traced: TracedModel, names: list[str], batch: int) -> list[LayerInfo]:
    layers: list[LayerInfo] = []
    for name in names:
        module = model.get_submodule(name)
        calls = traced.shapes.get(name, [])
        if not calls:
            log.warning("layer %s is never called by forward(); it gets no MACs and no edges", name)
            geometry = {"in_channels": getattr(module, "in_channels", getattr(module, "in_features", 0)),
                        "out_channels": getattr(module, "out_channels", getattr(module, "out_features", 0)),
                        "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "groups": 1, "in_size": (0, 0),
                        "out_size": (0, 0), "macs": 0}
        else:
            geometry = layer_geometry(module, *calls[0], batch)
            geometry["macs"] = sum(layer_geometry(module, *shapes, batch)["macs"] for shapes in calls)
        layers.append(LayerInfo(name=name, index=len(layers), kind=_kind(module, traced.roles.get(name, set())),
                                module_type=type(module).__name__, params=param_count(module),
                                weight=weight_stats(module), calls=max(1, len(calls)), **geometry))
    return _mark_mlp(layers, traced)


def _mark_mlp(layers: list[LayerInfo], traced: TracedModel) -> list[LayerInfo]:
    """Plain linears joined to another plain linear by a sequential edge (fc1 -> act -> fc2) form an MLP."""
    by_name = {layer.name: layer for layer in layers}
    mlp: set[str] = set()
    for (src, dst), kind in traced.edges.items():
        if kind == "sequential" and by_name[src].kind == "linear" and by_name[dst].kind == "linear":
            mlp.update((src, dst))
    return [replace(layer, kind="mlp") if layer.name in mlp else layer for layer in layers]
