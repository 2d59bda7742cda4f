"""Model structure the families need: which layers are prunable and which channels are coupled.

Coupling comes from torch-pruning's ``DependencyGraph`` (residual adds, concats, depthwise convs, flatten
into a linear, attention reshapes); we never track dependencies by hand. Where torch-pruning's index
mapping is wrong or fails, the group becomes a *barrier*: its channels get no channel choices and its
reason is shown by ``sculpt-host inspect``. Barriers are found from what the trace recorded, never from
module names:

- a reshape/view in the group that splits or merges the channel axis (a channel shuffle
  ``view(n, g, c // g, h, w)``, a split into attention heads): torch-pruning maps channel indices through
  it unchanged, which is wrong there; a flatten of ``(N, C, H, W)`` into a linear is mapped correctly
  and stays allowed;
- ops that move data across channels (pixel shuffle, channel shuffle);
- a construct whose index mapping torch-pruning itself fails on (ShuffleNetV2 at small inputs raises
  ZeroDivisionError in its reshape mapping): that node is kept as a plain pass-through and marked;
- an attention module called with a different key or value than its query (cross-attention): its key and
  value bring channels of another stream (a self-attention ``nn.MultiheadAttention`` is one layer of the
  graph, its query's channels in and ``out_proj``'s out; see :mod:`patterns.attention`);
- grouped convs that cannot lose channels in equal blocks (group counts that do not divide one another, a
  group of one channel); otherwise a group through a grouped conv is cut into ``blocks`` equal runs
  (:mod:`patterns.grouped`);
- a layer whose torch-pruning walk does not end within its step budget (:data:`WALK_STEPS_PER_EDGE`):
  where concats and splits feed each other (timm's EfficientViT: each attention head's input is a split of
  the features plus the previous head's output) the (layer, channel subset) states the walk visits multiply,
  and one walk ran for more than ten minutes. That layer, and every layer the walk had reached through its
  output channels, becomes a barrier instead of stalling the graph (a walk also stops after
  :data:`WALK_SECONDS`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from patterns.attention import ATTENTION_TYPES, embedding_pruner, install_stand_ins, opaque_self_attention
from patterns.errors import ModelError
from patterns.grouped import combine_blocks, grouped_barrier, is_grouped

log = logging.getLogger(__name__)

# Element-wise ops in a torch-pruning group that map a zero channel to a zero channel and never mix
# channels; anything else (adds, reshapes, concats) makes a group "shared".
_CHANNEL_LOCAL_OPS = ("Relu", "Hardtanh", "Gelu", "Silu", "Hardswish", "Sigmoid", "Clone", "Dropout",
                      "Mean", "AvgPool", "MaxPool", "AdaptiveAvgPool", "Tanh", "LeakyRelu", "Elu")
# Ops that move values across channels: a channel removed before them is not one channel after them.
_CHANNEL_MIXING_OPS = ("PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "Roll")
# A torch-pruning walk of one layer's channels may take this many steps per dependency edge of the graph
# (a step: one dependency checked from one visited (node, channel subset) state). Across the 22 models of
# the generality corpus the longest walk took at most 1 step per edge (ShuffleNetV2 342 steps / 522 edges,
# a ViT 148 / 146); EfficientViT-M0's residual-stream walk passed 8,000 visited states in seconds and did not
# end in ten minutes. Counting steps, not seconds, keeps the graph the same on a loaded machine.
WALK_STEPS_PER_EDGE = 3
# ... and may map at most this many channel indices (summed over its steps): a flatten maps one channel to
# H*W indices, and EfficientViT-M0's walks spent 4 s on 22 steps and its patch merge 208 s within the step
# budget. The corpus's largest is ShuffleNetV2's 393,744 (1.3 s).
WALK_INDEX_ENTRIES = 1_500_000
# A backstop in seconds for costs neither count sees; only a pathological walk depends on the machine's load.
WALK_SECONDS = 30.0


@dataclass(frozen=True)
class GroupMember:
    """One module whose channel dimension belongs to a coupled group."""

    name: str
    kind: str  # "out": output channels/features, "in": input channels/features
    module_type: str


@dataclass(frozen=True)
class CoupledGroup:
    """Channels that must be removed together.

    ``root`` is the first prunable layer (Conv2d/Linear producing the channels) in module order; ``private``
    is True when the channels are made by one layer and consumed by plain convs only (no residual add,
    concat or reshape), so a channel permutation can be folded into the consumers' weights.
    """

    root: str
    channels: int
    members: tuple[GroupMember, ...]
    private: bool
    has_layernorm: bool
    barrier: str = ""  # why channel pruning is not exact for this group ("" when it is)
    # > 1 when the channels pass a grouped conv: they are cut into this many equal contiguous runs and every
    # removal takes the same count from each (:mod:`patterns.grouped`)
    blocks: int = 1

    @property
    def producers(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.kind == "out" and m.module_type in ("Conv2d", "Linear"))

    @property
    def consumers(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.kind == "in")


def is_prunable(module: nn.Module) -> bool:
    """Conv2d and Linear layers with real weights are the layers plans address."""
    return isinstance(module, nn.Conv2d | nn.Linear)


def prunable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the Conv2d / Linear layers of ``model``, in module order."""
    return [name for name, module in model.named_modules() if name and is_prunable(module)]


class _ReshapeShapes(TorchFunctionMode):
    """Records (input shape, output shape) of every view/reshape/flatten by the grad_fn it creates, which
    is how torch-pruning's nodes are keyed; used to tell which reshapes keep the channel axis whole."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[object, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # grad_fn -> the sizes a reshape/view call spelled out (``x.reshape(n, self.dim, -1)``): a width there
        # may be a constant of the model's code rather than read from the tensor
        self.spelled: dict[object, tuple[int, ...]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        grad_fn = getattr(out, "grad_fn", None) if isinstance(out, torch.Tensor) else None
        if grad_fn is not None and args and isinstance(args[0], torch.Tensor):
            name = grad_fn.name().lower()
            if "view" in name or "reshape" in name:
                self.shapes.setdefault(grad_fn, (tuple(args[0].shape), tuple(out.shape)))
                if getattr(func, "__name__", "") in ("reshape", "view"):
                    self.spelled.setdefault(grad_fn, _ints(list(args[1:]) + list((kwargs or {}).values())))
        return out


def _ints(values) -> tuple[int, ...]:
    found: list[int] = []
    for v in values:
        if isinstance(v, list | tuple | torch.Size):
            found.extend(_ints(v))
        elif isinstance(v, int) and not isinstance(v, bool):
            found.append(v)
    return tuple(found)


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """torch-pruning's DependencyGraph of ``model`` (traced once with ``example_input``).

    The graph carries two extras: ``sculpt_reshapes`` (grad_fn -> input/output shape of each reshape) and
    ``sculpt_failed`` (node -> why torch-pruning could not map channel indices through it).
    """
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    recorder = _ReshapeShapes()
    attention: list = []

    def forward(module, inputs):
        with recorder, opaque_self_attention(module) as calls:
            out = module(inputs)
        calls.read_by(out)
        attention.append(calls)
        return out

    dg = tp.DependencyGraph()
    pruner = embedding_pruner()
    try:
        with warnings.catch_warnings():
            # Free parameters (class token, position embedding) are reported but never pruned by us.
            warnings.simplefilter("ignore", UserWarning)
            try:
                dg.build_dependency(model, example_inputs=example_input, forward_fn=forward,
                                    customized_pruners={kind: pruner for kind in ATTENTION_TYPES})
                dg.sculpt_failed = {}
            except Exception as exc:
                if not _raised_in_index_mapping(exc):
                    raise
                dg.sculpt_failed = _isolate_failed_mappings(dg)
    except Exception as exc:  # tracing failures come in many types from torch internals
        raise ModelError(f"cannot trace the model to find coupled channels: {type(exc).__name__}: {exc}",
                         hint="the model must run on the example input and be traceable by torch autograd; "
                              "check the input shape") from exc
    finally:
        model.train(was_training)
    dg.sculpt_reshapes = recorder.shapes
    dg.sculpt_spelled = recorder.spelled
    dg.sculpt_example = example_input
    # attention modules not (only) called as self-attention, or whose weights the model reads: their
    # embedding groups are barriers
    dg.sculpt_cross_attention = set().union(*(calls.others for calls in attention))
    # an attention's out_proj is not a node of the graph (never called as a module): its channels are the
    # attention module's output channels
    dg.sculpt_out_proj = {m.out_proj: m for m in model.modules() if isinstance(m, ATTENTION_TYPES)}
    _meter_walks(dg)
    return dg


def _raised_in_index_mapping(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith("index_mapping.py"):
            return True
        tb = tb.tb_next
    return False


def _isolate_failed_mappings(dg) -> dict[object, str]:
    """Run torch-pruning's index-mapping update node by node; a node it fails on becomes a plain
    pass-through (so later ``get_pruning_group`` calls, which redo the update, do not fail again) and is
    reported, so every group through it is a barrier."""
    from torch_pruning import ops
    from torch_pruning.dependency import index_mapping as im

    updates = {ops.OPTYPE.CONCAT: im.update_concat_index_mapping, ops.OPTYPE.SPLIT: im.update_split_index_mapping,
               ops.OPTYPE.RESHAPE: im.update_reshape_index_mapping, ops.OPTYPE.UNBIND: im.update_unbind_index_mapping,
               ops.OPTYPE.EXPAND: im.update_expand_index_mapping, ops.OPTYPE.SLICE: im.update_slice_index_mapping}
    failed: dict[object, str] = {}
    for node in list(dg.module2node.values()):
        update = updates.get(node.type)
        if update is None:
            continue
        try:
            update(dg, node)
        except Exception as exc:  # the library's own bug on this construct (e.g. ZeroDivisionError)
            op = node.grad_fn.name() if hasattr(node.grad_fn, "name") else str(node.type)
            failed[node] = f"torch-pruning cannot map channels through {op} ({type(exc).__name__}: {exc})"
            log.info("coupling barrier: %s", failed[node])
            node.type = ops.OPTYPE.ELEMENTWISE
    im.update_index_mapping(dg)  # must pass now; a failure here is a real error
    return failed


def _feeds_linear(node, hops: int) -> bool:
    """Whether ``node`` is a Linear, or an element-wise step (addmm, mm) of one within ``hops``."""
    from torch_pruning import ops

    if isinstance(node.module, nn.Linear):
        return True
    if hops == 0 or node.type != ops.OPTYPE.ELEMENTWISE or not node.outputs:
        return False
    return all(_feeds_linear(out, hops - 1) for out in node.outputs)


def _split_barrier(node) -> str:
    """Why a split/slice node fixes the channel layout (its sizes or bounds are constants of the model's
    code, e.g. MixNet's ``torch.split(x, self.splits, 1)`` or ShuffleNetV2's ``chunk``), or "" for a slice
    that keeps everything."""
    grad_fn = node.grad_fn
    op = grad_fn.name() if hasattr(grad_fn, "name") else "split"
    if "slice" in op.lower():
        sizes = getattr(grad_fn, "_saved_self_sym_sizes", None)
        dim = getattr(grad_fn, "_saved_dim", None)
        start, end, step = (getattr(grad_fn, f"_saved_{k}", None) for k in ("start", "end", "step"))
        if sizes is not None and dim is not None and dim < len(sizes) and start in (0, None) \
                and step in (1, None) and (end is None or end >= int(sizes[dim])):
            return ""
        return f"channels pass through a slice ({op}) whose bounds are fixed in the model's code"
    return f"channels pass through a split ({op}) whose sizes are fixed in the model's code"


def _reshape_barrier(dg, node) -> str:
    """Why channel indices do not pass ``node`` (a torch-pruning RESHAPE node) unchanged, or ""."""
    from torch_pruning.dependency import shape_infer

    shapes = getattr(dg, "sculpt_reshapes", {}).get(node.grad_fn)
    op = node.grad_fn.name() if node.grad_fn is not None else "reshape"
    if shapes is None:
        # Not made by a torch function call, so made inside an op: F.linear on a (B, N, C) input views it
        # as (B * N, C) for its matmul, which keeps the feature axis whole.
        if node.outputs and all(_feeds_linear(out, hops=2) for out in node.outputs):
            return ""
        return f"channels pass through {op}, whose shapes were not recorded"
    before, after = shapes
    channels = None
    for source in node.inputs:
        channels = shape_infer.infer_out_channels_recursively(dg, source, [0])
        if channels:
            break
    if before == after or (len(before) == 4 and math.prod(before[2:]) == 1 and after == before[:2]):
        return ""
    if not channels:
        return f"channels pass through {op} {list(before)} -> {list(after)}, whose channel axis is unknown"
    # The channel axis of a conv-layout tensor is dim 1; of a token/linear layout, the last dim.
    axes = [1] if len(before) >= 4 else [len(before) - 1, 1]
    for axis in axes:
        if axis >= len(before) or before[axis] != channels:
            continue
        lead = math.prod(before[:axis])
        for j, extent in enumerate(after):
            if extent == channels and math.prod(after[:j]) == lead:
                return ""  # the axis survives whole: other dims were merged or split around it
        if len(after) == axis + 1 and math.prod(after[:axis]) == lead:
            return ""  # flatten of the channel axis with what follows it (into a linear): mapped by stride
    return (f"channels pass through {op} {list(before)} -> {list(after)}, which splits or merges the "
            f"channel axis ({channels} channels; e.g. a channel shuffle or a split into heads)")


def _op_name(dep) -> str:
    module = dep.target.module
    if isinstance(module, nn.Module) and not type(module).__name__.startswith("_"):
        return type(module).__name__
    return str(getattr(dep.target, "grad_fn", None) or dep.target.name)


class WalkTooLong(RuntimeError):
    """torch-pruning's walk of a layer's channels exceeded its step budget (:data:`WALK_STEPS_PER_EDGE`)."""


class _WalkMeter:
    """Counts the steps of the torch-pruning walk in progress on one graph and stops it past ``limit``.

    Installed on every dependency of the graph (an instance attribute wrapping ``is_triggered_by``, which
    only ``get_pruning_group``'s walk calls); counts only between :meth:`start` and :meth:`stop`, so
    torch-pruning's other uses of the graph are untouched. Nodes a stopped walk reached through their output
    channels are remembered: their own walks would cover the same states, so they stop at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.steps = -1  # -1: no walk of ours in progress
        self.deadline = 0.0
        self.entries = 0
        self.root = None
        self.reached: set[object] = set()
        self.stopped: dict[object, str] = {}  # node -> why its walk is not attempted

    def wrap(self, dep):
        check = dep.is_triggered_by

        def is_triggered_by(fn):
            triggered = check(fn)
            if self.steps >= 0:
                self.steps += 1
                if triggered and "out_channels" in getattr(dep.handler, "__name__", ""):
                    self.reached.add(dep.target)
                if self.steps > self.limit:
                    raise WalkTooLong(f"torch-pruning's walk of these channels did not end within {self.limit} "
                                      "steps (paths through concats and splits that feed each other multiply)")
                if time.monotonic() > self.deadline:
                    raise WalkTooLong(f"torch-pruning's walk of these channels did not end within {WALK_SECONDS:g} s "
                                      f"({self.steps} steps, {self.entries} channel indices mapped)")
            return triggered
        return is_triggered_by

    def count(self, mapping):
        """``mapping`` (one of torch-pruning's index mappings) with the indices it returns counted."""
        def mapped(idxs):
            out = mapping(idxs)
            if self.steps >= 0:
                self.entries += len(out)
                if self.entries > WALK_INDEX_ENTRIES:
                    raise WalkTooLong(f"torch-pruning's walk of these channels mapped more than {WALK_INDEX_ENTRIES} "
                                      f"channel indices in {self.steps} steps (flattens multiply them)")
            return out
        return mapped

    def start(self, node) -> None:
        if node in self.stopped:
            raise WalkTooLong(self.stopped[node])
        self.steps = 0
        self.entries = 0
        self.deadline = time.monotonic() + WALK_SECONDS
        self.root = node
        self.reached = {node}

    def stop(self, root: str, failed: BaseException | None) -> None:
        if isinstance(failed, WalkTooLong):
            self.stopped[self.root] = str(failed)
            for node in self.reached:
                self.stopped.setdefault(node, f"coupled with {root}, where {failed}")
        self.steps = -1
        self.reached = set()


class _CountedMappings(list):
    """A dependency's index mappings, each counted by the meter when the walk iterates them (torch-pruning
    replaces entries in place on every ``get_pruning_group``, so they are wrapped as they are read)."""

    def __init__(self, mappings, meter: _WalkMeter) -> None:
        super().__init__(mappings)
        self.meter = meter

    def __iter__(self):
        for mapping in super().__iter__():
            yield None if mapping is None else self.meter.count(mapping)


def _meter_walks(dg) -> None:
    edges = sum(len(node.dependencies) for node in dg.module2node.values())
    meter = _WalkMeter(max(WALK_STEPS_PER_EDGE * edges, 64))
    for node in dg.module2node.values():
        for dep in node.dependencies:
            dep.is_triggered_by = meter.wrap(dep)
            dep.index_mapping = _CountedMappings(dep.index_mapping, meter)
    dg.sculpt_meter = meter


def group_of(dg, module: nn.Module, names: dict[nn.Module, str], idxs: list[int] | None = None):
    """The torch-pruning group of ``module``'s output channels (all channels unless ``idxs``); raises
    :class:`WalkTooLong` where its walk exceeds the step budget (graphs from :func:`build_dependency_graph`)."""
    import torch_pruning as tp

    handler = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
    n = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    owner = getattr(dg, "sculpt_out_proj", {}).get(module)
    if owner is not None:  # an attention's out_proj: the attention module's output channels
        module, handler = owner, dg.get_pruner_of_module(owner).prune_out_channels
    meter = getattr(dg, "sculpt_meter", None)
    if meter is None:
        return dg.get_pruning_group(module, handler, idxs=list(range(n)) if idxs is None else list(idxs))
    meter.start(dg.module2node.get(module))
    failed = None
    try:
        return dg.get_pruning_group(module, handler, idxs=list(range(n)) if idxs is None else list(idxs))
    except WalkTooLong as exc:
        failed = exc
        raise
    finally:
        meter.stop(names.get(module, type(module).__name__), failed)


def try_group_of(dg, module: nn.Module, names: dict[nn.Module, str], root: str, channels: int):
    """(torch-pruning group, :class:`CoupledGroup`) of ``module``'s outputs; where torch-pruning cannot
    follow the channels (its index mapping fails on a construct), (None, a barrier group of the layer
    alone) so the model still gets a graph and every other choice."""
    try:
        tp_group = group_of(dg, module, names)
    except Exception as exc:  # the library's own failure on this construct
        reason = (str(exc) if isinstance(exc, WalkTooLong)
                  else f"torch-pruning cannot follow this layer's channels ({type(exc).__name__}: {exc})")
        log.info("coupling barrier at %s: %s", root, reason)
        member = GroupMember(root, "out", type(module).__name__)
        return None, CoupledGroup(root, channels, (member,), False, False, reason)
    return tp_group, describe_group(tp_group, names, root, channels, dg)


def describe_group(group, names: dict[nn.Module, str], root: str, channels: int, dg=None) -> CoupledGroup:
    """Turn a torch-pruning group into our plain :class:`CoupledGroup` (``dg``: the graph it came from,
    needed to find barriers)."""
    from torch_pruning import ops

    members: list[GroupMember] = []
    private = True
    has_layernorm = False
    producers = 0
    barrier = ""
    attention_barrier = ""
    spelled = False  # passes a reshape that spells the group's width out: try a removal before trusting it
    blocks = 1
    failed = getattr(dg, "sculpt_failed", {}) if dg is not None else {}
    cross = getattr(dg, "sculpt_cross_attention", set()) if dg is not None else set()
    for dep, dep_idxs in group:
        module = dep.target.module
        handler = getattr(dep.handler, "__name__", str(dep.handler))
        kind = "in" if "in_channels" in handler else "out"
        if not barrier and dep.target in failed:
            barrier = failed[dep.target]
        if isinstance(module, ATTENTION_TYPES) and module in names:
            # one layer: the query's channels in, out_proj's rows out (reported as the producer)
            name = names[module]
            members.append(GroupMember(f"{name}.out_proj" if name else "out_proj", "out", "Linear")
                           if kind == "out" else GroupMember(name, "in", type(module).__name__))
            producers += kind == "out"
            private = False
            if module in cross and not attention_barrier:  # says more than what its traced internals hit
                attention_barrier = (f"channels pass through the attention {name or 'model'}, called as cross-attention (its "
                           "key or value is not its query) or with its attention weights read")
        elif isinstance(module, nn.Module) and module in names:
            mtype = type(module).__name__
            members.append(GroupMember(names[module], kind, mtype))
            if isinstance(module, nn.LayerNorm):
                has_layernorm = True
                if not barrier and len(module.normalized_shape) != 1:
                    barrier = (f"channels pass through the LayerNorm {names[module]} over several axes (normalized "
                               f"shape {tuple(module.normalized_shape)}), which has no channel axis to narrow")
            if kind == "out" and isinstance(module, nn.Conv2d | nn.Linear):
                producers += 1  # a depthwise conv in the group counts too: it breaks privacy
            if kind == "in" and not (isinstance(module, nn.Conv2d) and module.groups == 1):
                private = False
            if not isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d):
                private = False
            if not barrier and is_grouped(module):
                # the same count must go from each of its groups (removed by patterns.grouped at realization)
                barrier = grouped_barrier(module, names[module], kind, dep_idxs, channels)
                blocks = combine_blocks(blocks, module.groups)
                if not barrier and not blocks:
                    barrier = (f"channels pass through grouped convs whose group counts do not divide one another "
                               f"(one has groups={module.groups})")
        else:
            op = _op_name(dep)
            if not any(tag in op for tag in _CHANNEL_LOCAL_OPS):
                private = False
            if not barrier and dg is not None and dep.target.type == ops.OPTYPE.RESHAPE:
                barrier = _reshape_barrier(dg, dep.target)
                if not barrier and channels in getattr(dg, "sculpt_spelled", {}).get(dep.target.grad_fn, ()):
                    spelled = True
            if not barrier and dep.target.type in (ops.OPTYPE.SPLIT, ops.OPTYPE.SLICE):
                barrier = _split_barrier(dep.target)
            if not barrier and any(tag in op for tag in _CHANNEL_MIXING_OPS):
                barrier = f"channels pass through {op}, which moves values across channels"
    barrier = attention_barrier or barrier
    if not barrier and spelled:
        barrier = _trial_removal(dg, root, members)
    if producers != 1 or barrier or blocks > 1:
        private = False
    return CoupledGroup(root, channels, tuple(members), private, has_layernorm, barrier, max(blocks, 1))


def _trial_removal(dg, root: str, members: list[GroupMember]) -> str:
    """Remove one channel of ``root``'s group from a copy of the model and run it: "" when it runs, else why
    not. Asked only where the group passes a reshape that spells its width out (torchvision's ViT reshapes
    its patches to ``(n, self.hidden_dim, -1)``, a constant the narrower model no longer matches)."""
    import copy

    model, x = getattr(dg, "model", None), getattr(dg, "sculpt_example", None)
    if model is None or x is None:
        return ""
    trial = copy.deepcopy(model).eval()
    try:
        install_stand_ins(trial, {m.name for m in members if m.kind == "in"})
        trial_dg = build_dependency_graph(trial, x)
        trial_names = {module: name for name, module in trial.named_modules()}
        group_of(trial_dg, trial.get_submodule(root), trial_names, [0]).prune()
        with torch.no_grad():
            trial(x)
    except Exception as exc:  # noqa: BLE001 - whatever the model's code raises is the reason
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (f"the model's code does not run with one channel fewer here ({type(exc).__name__}: {text[:160]}); "
                "e.g. a reshape to a width fixed in its code")
    return ""


def coupled_groups(model: nn.Module, example_input: torch.Tensor, dg=None) -> list[CoupledGroup]:
    """Every group of coupled output channels of the prunable layers, each reported once (by its root)."""
    names = {module: name for name, module in model.named_modules()}
    dg = dg or build_dependency_graph(model, example_input)
    seen: set[tuple[str, str]] = set()
    groups: list[CoupledGroup] = []
    for name in prunable_layers(model):
        if (name, "out") in seen:
            continue
        module = model.get_submodule(name)
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        _, group = try_group_of(dg, module, names, name, channels)
        for member in group.members:
            if member.kind == "out":
                seen.add((member.name, "out"))
        groups.append(group)
    return groups
