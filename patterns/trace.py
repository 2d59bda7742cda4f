"""Trace a model with torch.fx and read off the dataflow between its prunable layers.

torch.fx keeps ``nn.Conv2d``/``nn.Linear`` calls as ``call_module`` nodes named by their qualified module
name, which is exactly how plans address layers; it traces ResNet-110 in ~0.1 s, far faster than
torch.export. Models that symbolic tracing cannot handle (Python control flow on shapes, ``len(x)``,
non-torch calls on sizes) fall back to a non-strict ``torch.export``, whose ATen graph names each layer
through its weight parameter. Layer shapes come from forward hooks during one eager run on the example input (cheaper
than interpreting the graph node by node with fx ShapeProp); the caller may supply that run, so the forward
that torch-pruning needs anyway for its DependencyGraph also yields the shapes.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from patterns.errors import ModelError

# Edge types, in the order of ``edge_type`` ids (host.graph). A path through several op types keeps the strongest
# (rightmost) one: an edge that crosses an add and then an attention matmul is an attention edge.
EDGE_TYPES = ("sequential", "residual", "concat", "attention")

log = logging.getLogger(__name__)

_aten = torch.ops.aten
# Python-level targets (torch.fx) and their ATen counterparts (torch.export fallback).
_ADD_OPS = {operator.add, operator.iadd, operator.sub, torch.add, torch.sub, _aten.add.Tensor, _aten.add_.Tensor,
            _aten.sub.Tensor}
_CAT_OPS = {torch.cat, torch.concat, torch.stack, _aten.cat.default, _aten.stack.default}
_MATMUL_OPS = {torch.matmul, operator.matmul, torch.bmm, torch.baddbmm, torch.einsum, _aten.matmul.default,
               _aten.bmm.default, _aten.baddbmm.default, _aten.einsum.default}
_SDPA_OPS = {torch.nn.functional.scaled_dot_product_attention, _aten.scaled_dot_product_attention.default}
_LAYER_OPS = {_aten.conv2d.default, _aten.convolution.default, _aten.linear.default}
_ADD_METHODS = {"add", "add_", "sub"}
_MATMUL_METHODS = {"matmul", "bmm"}


@dataclass
class TracedModel:
    """The traced graph plus what the graph builder needs from it."""

    graph_module: fx.GraphModule
    layer_nodes: dict[str, list[fx.Node]]  # layer name -> the nodes that run it
    inputs: set[fx.Node]  # the placeholders of the model's input (not of its parameters)
    tracer: str  # "fx" or "export"
    shapes: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]  # layer -> (input, output) shape per call
    edges: dict[tuple[str, str], str] = field(default_factory=dict)  # (src, dst) -> edge type
    roles: dict[str, set[str]] = field(default_factory=dict)  # layer -> {"q", "k", "v", "out"}
    attention: list[AttentionSite] = field(default_factory=list)  # every attention op found in the graph


@dataclass(frozen=True)
class AttentionSite:
    """One attention computation found in the traced graph.

    ``kind`` is "ops" for an attention written out of layers and ops (SDPA, or a matmul whose first operand
    comes from a q k^T matmul) and "module" for an ``nn.MultiheadAttention`` call, whose projections live
    in the module's own parameters. ``owner`` is the innermost module whose forward runs all of it (the
    op and every projection: "" when only the model's own forward does); ``op`` names the graph node.
    ``weights_used`` tells, for a module call, whether anything reads its attention-weights output (None:
    unknown, e.g. when the module was traced through by torch.export).
    """

    kind: str
    op: str
    owner: str
    q: tuple[str, ...] = ()
    k: tuple[str, ...] = ()
    v: tuple[str, ...] = ()
    out: tuple[str, ...] = ()
    weights_used: bool | None = None


def trace_model(model: nn.Module, example_input: torch.Tensor, layer_names: list[str],
                run_forward: Callable[[], object] | None = None) -> TracedModel:
    """Symbolically trace ``model``, record layer shapes, and find layer-to-layer dataflow and attention roles.

    ``run_forward`` runs ``model`` once on ``example_input`` (default: a plain no-grad call); only its
    first forward pass is recorded.
    """
    shapes = _layer_shapes(model, example_input, layer_names, run_forward)
    try:
        traced = _fx_trace(model, layer_names, shapes)
    except Exception as fx_exc:  # fx raises TraceError, TypeError, NotImplementedError... for dynamic code
        log.info("torch.fx cannot trace the model (%s); falling back to torch.export", fx_exc)
        try:
            traced = _export_trace(model, example_input, layer_names, shapes)
        except Exception as exc:  # export errors come from deep inside torch
            raise ModelError(
                f"cannot trace the model: torch.fx says {type(fx_exc).__name__}: {fx_exc}; torch.export says "
                f"{type(exc).__name__}: {exc}".replace("\n", " ")[:600],
                hint="the forward must be traceable: avoid Python control flow on tensor values "
                     "(if x.sum() > 0: ...) or move it into torch.cond; see "
                     "https://pytorch.org/docs/stable/fx.html#limitations-of-symbolic-tracing",
            ) from exc
    _Dataflow(traced).run()
    return traced


def trace_structure(model: nn.Module, example_input: torch.Tensor | None, layer_names: list[str]) -> TracedModel:
    """Dataflow and attention sites only (no shapes, no forward pass under torch.fx).

    Without ``example_input`` only torch.fx can trace, so a model that needs the torch.export fallback
    raises ModelError.
    """
    try:
        traced = _fx_trace(model, layer_names, {})
    except Exception as fx_exc:  # see trace_model
        if example_input is None:
            raise ModelError(f"torch.fx cannot trace the model ({type(fx_exc).__name__}: {fx_exc})"[:400],
                             hint="pass an example input so torch.export can trace it instead") from fx_exc
        try:
            traced = _export_trace(model, example_input, layer_names, {})
        except Exception as exc:  # export errors come from deep inside torch
            raise ModelError(f"cannot trace the model: {type(exc).__name__}: {exc}".replace("\n", " ")[:400],
                             hint="the forward must be traceable by torch.fx or torch.export") from exc
    _Dataflow(traced).run()
    return traced


def _fx_trace(model: nn.Module, layer_names: list[str], shapes: dict) -> TracedModel:
    graph_module = fx.symbolic_trace(model)
    wanted = set(layer_names)
    layer_nodes: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and node.target in wanted:
            layer_nodes[str(node.target)].append(node)
        elif node.op == "call_module" and f"{node.target}.out_proj" in wanted and \
                isinstance(graph_module.get_submodule(str(node.target)), nn.MultiheadAttention):
            # its out_proj runs inside the leaf module's forward: the call stands for that layer's dataflow
            layer_nodes[f"{node.target}.out_proj"].append(node)
    inputs = {n for n in graph_module.graph.nodes if n.op == "placeholder"}
    return TracedModel(graph_module, dict(layer_nodes), inputs, "fx", shapes)


def _export_trace(model: nn.Module, example_input: torch.Tensor, layer_names: list[str],
                  shapes: dict) -> TracedModel:
    """ATen-level trace; a conv/linear op belongs to the layer whose ``weight`` parameter it reads."""
    program = torch.export.export(model, (example_input,), strict=False)
    signature = program.graph_signature
    param_of = dict(signature.inputs_to_parameters)
    wanted = {f"{name}.weight": name for name in layer_names}
    user_inputs = set(signature.user_inputs)
    graph = program.graph_module.graph
    layer_nodes: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _LAYER_OPS and len(node.args) > 1:
            weight = node.args[1]
            layer = wanted.get(param_of.get(weight.name, "")) if isinstance(weight, fx.Node) else None
            if layer is not None:
                layer_nodes[layer].append(node)
    inputs = {n for n in graph.nodes if n.op == "placeholder" and n.name in user_inputs}
    return TracedModel(program.graph_module, dict(layer_nodes), inputs, "export", shapes)


def _layer_shapes(model: nn.Module, example_input: torch.Tensor, names: list[str],
                  run_forward: Callable[[], object] | None) -> dict:
    """(input shape, output shape) of every call of every named layer, from the first forward pass that
    completes (torch-pruning first tries ``model(*inputs)``, which may fail half-way)."""
    passes: list[dict[str, list]] = []
    completed: list[dict[str, list]] = []

    def start_pass(_module, _args):
        passes.append(defaultdict(list))

    def end_pass(_module, _args, _output):
        completed.append(passes[-1])

    def hook(name):
        def record(_module, args, output):
            if not passes:
                return
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                output = output[0]  # nn.MultiheadAttention: (output, weights)
            passes[-1][name].append((tuple(first.shape) if first is not None else (),
                                     tuple(output.shape) if isinstance(output, torch.Tensor) else ()))
        return record

    def runs(name: str) -> nn.Module:
        """The module whose call runs layer ``name``: an nn.MultiheadAttention runs its out_proj inside."""
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        return owner if child == "out_proj" and isinstance(owner, nn.MultiheadAttention) else model.get_submodule(name)

    handles = [runs(name).register_forward_hook(hook(name)) for name in names]
    handles.append(model.register_forward_pre_hook(start_pass))
    handles.append(model.register_forward_hook(end_pass))
    try:
        if run_forward is None:
            with torch.no_grad():
                model(example_input)
        else:
            run_forward()
    except Exception as exc:  # shape errors from the user's model
        raise ModelError(f"the model fails on an input of shape {tuple(example_input.shape)}: {exc}",
                         hint="pass an example input of the shape the model expects (--image-size, "
                              "--channels)") from exc
    finally:
        for handle in handles:
            handle.remove()
    if not completed:
        raise ModelError("the model's forward never completed on the example input",
                         hint="check that the model runs on an input of this shape")
    return dict(completed[0])


# Ops whose result is a shape, size or other non-tensor value; arithmetic on such values stays non-tensor.
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "item", "tolist"}


class _Dataflow:
    """Walks the fx graph between layer nodes. Memoized per node, so linear in graph size per layer."""

    def __init__(self, traced: TracedModel) -> None:
        self.traced = traced
        self.nodes = list(traced.graph_module.graph.nodes)
        self.layer_of = {n: name for name, nodes in traced.layer_nodes.items() for n in nodes}
        self.dependent = self._input_dependent()

    def run(self) -> None:
        for name, nodes in self.traced.layer_nodes.items():
            for node in nodes:
                self._walk_forward(name, node)
        self._attention_roles()

    def _input_dependent(self) -> set[fx.Node]:
        """Tensor nodes whose value depends on the input (not only on parameters or on its shape), so that
        ``x + pos_embed`` or ``cat([cls_token.expand(x.shape[0]), x])`` are not mistaken for joins."""
        scalar: set[fx.Node] = set()
        dependent: set[fx.Node] = set()
        for node in self.nodes:
            inputs = node.all_input_nodes
            if (node.op == "call_function" and node.target is getattr and len(node.args) > 1
                    and node.args[1] in _SHAPE_ATTRS) or (node.op == "call_method" and node.target in _SHAPE_METHODS):
                scalar.add(node)
            elif inputs and node.op in ("call_function", "call_method") and all(a in scalar for a in inputs) \
                    and getattr(node.target, "__module__", None) in ("_operator", "operator", "builtins", None):
                scalar.add(node)  # arithmetic or indexing on sizes
            elif node in self.traced.inputs or (node.op != "placeholder" and any(a in dependent for a in inputs)):
                dependent.add(node)
        return dependent

    def _data_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a in self.dependent]

    def op_type(self, node: fx.Node) -> str:
        """Which edge type passing through ``node`` implies ("" for a plain pass-through op)."""
        target = node.target
        joins = len(self._data_args(node)) >= 2
        if node.op == "call_function":
            if target in _SDPA_OPS or (target in _MATMUL_OPS and joins):
                return "attention"
            if target in _CAT_OPS and joins:
                return "concat"
            if target in _ADD_OPS and joins:
                return "residual"
        elif node.op == "call_method":
            if target in _MATMUL_METHODS and joins:
                return "attention"
            if target in _ADD_METHODS and joins:
                return "residual"
        return ""

    def is_attention_op(self, node: fx.Node) -> bool:
        return self.op_type(node) == "attention"

    def _walk_forward(self, src: str, start: fx.Node) -> None:
        rank = {t: i for i, t in enumerate(EDGE_TYPES)}
        best: dict[fx.Node, int] = {}
        stack = [(user, 0) for user in start.users]
        while stack:
            node, level = stack.pop()
            if node not in self.dependent:
                continue  # a shape read (x.shape[0]) is not dataflow
            if node in self.layer_of:
                key = (src, self.layer_of[node])
                current = self.traced.edges.get(key)
                if current is None or rank[current] < level:
                    self.traced.edges[key] = EDGE_TYPES[level]
                continue
            op = self.op_type(node)
            level = max(level, rank[op]) if op else level
            if best.get(node, -1) >= level:
                continue
            best[node] = level
            stack.extend((user, level) for user in node.users)

    def _upstream(self, node: fx.Node) -> tuple[set[str], set[fx.Node]]:
        """Layers and attention ops reached walking backwards from ``node`` (stopping at both)."""
        layers: set[str] = set()
        attention: set[fx.Node] = set()
        seen: set[fx.Node] = set()
        stack = [node]
        while stack:
            current = stack.pop()
            if current in seen or current not in self.dependent:
                continue
            seen.add(current)
            if current in self.layer_of:
                layers.add(self.layer_of[current])
                continue
            if self.is_attention_op(current):
                attention.add(current)
                continue
            stack.extend(current.all_input_nodes)
        return layers, attention

    def _attention_roles(self) -> None:
        roles = self.traced.roles
        attention_ops = [n for n in self.nodes if self.is_attention_op(n) and n.op != "placeholder"]
        found: dict[fx.Node, dict[str, set[str]]] = {}  # value-mixing op -> role -> layers
        scores_of: dict[fx.Node, set[fx.Node]] = {}
        for op in attention_ops:
            args = self._data_args(op)
            if op.target in _SDPA_OPS:
                found[op] = {role: self._upstream(arg)[0] if isinstance(arg, fx.Node) else set()
                             for role, arg in zip(("q", "k", "v"), op.args[:3], strict=False)}
                continue
            if op.target in _CAT_OPS or len(args) < 2:
                continue
            first_ops = self._upstream(op.args[0])[1] if isinstance(op.args[0], fx.Node) else set()
            if first_ops:
                # softmax(q k^T) @ v: this op mixes values, the upstream op computed the scores
                second = op.args[1] if isinstance(op.args[1], fx.Node) else None
                site = found[op] = {"q": set(), "k": set(),
                                    "v": self._upstream(second)[0] if second is not None else set()}
                scores_of[op] = first_ops
                for score in first_ops:
                    for role, arg in (("q", score.args[0]), ("k", score.args[1])):
                        if isinstance(arg, fx.Node):
                            site[role] |= self._upstream(arg)[0]
        for site in found.values():
            for role, layers in site.items():
                for layer in layers:
                    roles.setdefault(layer, set()).add(role)
        outs: dict[fx.Node, set[str]] = {op: set() for op in found}
        if found:
            for name, nodes in self.traced.layer_nodes.items():
                for node in nodes:
                    _, ops = self._upstream(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else (set(), set())
                    for op in ops & set(found):
                        roles.setdefault(name, set()).add("out")
                        outs[op].add(name)
        for op, site in found.items():
            layer_nodes = [n for role in site.values() for layer in role | outs[op]
                           for n in self.traced.layer_nodes.get(layer, ())]
            involved = [op, *scores_of.get(op, ()), *layer_nodes]
            self.traced.attention.append(AttentionSite(
                "ops", op.name, _owner(involved), tuple(sorted(site["q"])), tuple(sorted(site["k"])),
                tuple(sorted(site["v"])), tuple(sorted(outs[op]))))
        self._attention_modules()

    def _attention_modules(self) -> None:
        """``nn.MultiheadAttention`` calls: a leaf module under torch.fx, its ops under torch.export."""
        root = self.traced.graph_module
        seen: set[str] = set()
        for node in self.nodes:
            if node.op == "call_module":
                module = root.get_submodule(str(node.target))
                if isinstance(module, nn.MultiheadAttention) and str(node.target) not in seen:
                    seen.add(str(node.target))
                    used = any(not (user.op == "call_function" and user.target is operator.getitem)
                               or (user.args[1] != 0 and user.users) for user in node.users)
                    self.traced.attention.append(AttentionSite("module", node.name, str(node.target),
                                                               out=(f"{node.target}.out_proj",), weights_used=used))
                    self.traced.roles.setdefault(f"{node.target}.out_proj", set()).add("out")
            elif self.traced.tracer == "export":
                for path, kind in (node.meta.get("nn_module_stack") or {}).values():
                    if str(kind).endswith("torch.nn.modules.activation.MultiheadAttention") and path not in seen:
                        seen.add(path)
                        self.traced.attention.append(AttentionSite("module", node.name, path,
                                                                   out=(f"{path}.out_proj",), weights_used=None))
                        self.traced.roles.setdefault(f"{path}.out_proj", set()).add("out")


def _module_path(node: fx.Node) -> list[str]:
    """Qualified names of the modules whose forward ran ``node``, outermost first (the model itself left out)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [str(entry[0]) for entry in stack.values() if entry and entry[0]]


def _owner(nodes: list[fx.Node]) -> str:
    """The innermost module whose forward runs every node of ``nodes`` ("" for the model itself)."""
    paths = [_module_path(node) for node in nodes]
    common: list[str] = []
    for level in zip(*paths, strict=False):
        if any(entry != level[0] for entry in level):
            break
        common.append(level[0])
    return common[-1] if common else ""
