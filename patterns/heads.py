"""Attention heads of any transformer spelling, found from the traced graph.

:func:`patterns.trace.trace_structure` finds each attention computation (SDPA, softmax(q k^T) v written
out with matmuls, or an ``nn.MultiheadAttention`` call) and the module whose forward runs it (its *owner*).
Here the owner is traced again on its own and run once on the input it really receives, with every Linear
output replaced by a tensor of feature ids pushed through the same data-movement ops (reshape, permute,
unbind, split, ...). At the attention op those ids say, for every (batch x head) slice of q, k and v, which
output features of which Linear it holds, so the head count, the head size and the q/k/v rows of every head
come out of the graph whatever the spelling (separate q/k/v, a fused ``Linear(d, 3d)`` in any layout,
(B*H, N, d) bmm or (B, H, N, d) SDPA). Ids of the attention output, pushed on to the Linear that consumes
it, give the output projection's columns per head.

A site is accepted only when removing heads is exact: the v path and the merge into the output projection
only move data or scale it (a masked head then contributes exactly zero), nothing else reads the heads,
per-head ops (q/k norms) stay inside a head, and masks and biases on the scores broadcast over heads. The
realization is tried on a copy before a choice is offered: integer attributes of the owner equal to the
head count (or to the merged width) are updated, or, when that is not enough (a merge that reads the width
from the input), the owner's traced graph is rewritten (sizes along head axes scaled) and installed in its
place. ``nn.MultiheadAttention`` keeps q/k/v in its own parameters and needs q width == embed_dim, so a pruned
one is replaced by :class:`PrunedMultiheadAttention` built from its weights.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import itertools
import logging
import operator
import re
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from patterns.attention import PrunedMultiheadAttention, packed_in_proj
from patterns.errors import ModelError, PlanError
from patterns.family import set_submodule
from patterns.structure import prunable_layers
from patterns.trace import trace_structure

log = logging.getLogger(__name__)

Heads = tuple[tuple[int, ...], ...]  # per head: feature (row or column) indices, in head-dim order


@dataclass(frozen=True)
class HeadLayout:
    """How one attention's heads sit in its projections.

    ``q``/``k``/``v`` are (layer, rows per head) of the layers producing them (one layer for a fused
    qkv); ``out`` is (layer, input columns per head) of the output projection. For an
    ``nn.MultiheadAttention`` (``route == "module"``) the q/k/v layer is the module itself and rows index
    its stacked in-projection [q; k; v]. ``anchor`` is the layer a plan puts the head pattern on (the q
    producer; the out projection of an ``nn.MultiheadAttention``, its only Linear).
    """

    anchor: str
    owner: str
    heads: int
    q: tuple[str, Heads]
    k: tuple[str, Heads]
    v: tuple[str, Heads]
    out: tuple[str, Heads]
    route: str  # "attributes" | "graph" | "module"
    attributes: tuple[tuple[str, str], ...] = ()  # owner attribute, what it counts (see _counts)
    edits: tuple[tuple[str, tuple[int, ...]], ...] = ()  # graph route: (node, path into args) sizes to scale
    concrete: tuple[tuple[str, object], ...] = ()  # graph route: non-tensor args the owner was traced with

    @property
    def head_dims(self) -> tuple[int, int]:
        return len(self.q[1][0]), len(self.v[1][0])


# --------------------------------------------------------------------------------------------- discovery

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model: nn.Module) -> tuple:
    """What the layouts depend on: module types, parameter shapes and plain attributes (head counts, flags
    such as timm's ``fused_attn`` that pick a forward path)."""
    return tuple((name, type(m), tuple(tuple(p.shape) for p in m.parameters(recurse=False)),
                  tuple((k, v) for k, v in vars(m).items()
                        if k != "training" and isinstance(v, bool | int | float | str | type(None))))
                 for name, m in model.named_modules())


def head_layouts(model: nn.Module, example_input: torch.Tensor | None = None, *, traced=None,
                 reasons: dict[str, str] | None = None) -> dict[str, HeadLayout]:
    """Every attention of ``model`` whose heads can be removed exactly, by anchor layer.

    ``traced`` reuses a :class:`patterns.trace.TracedModel` of ``model``. Without ``example_input`` each
    attention's owner is probed with a (2, 5, width) token batch. ``reasons`` collects, per owner, why an
    attention found in the graph offers no head choice. Results are cached per model and input shape.
    """
    key = (_fingerprint(model), None if example_input is None else tuple(example_input.shape))
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == key:
        if reasons is not None:
            reasons.update(cached[2])
        return dict(cached[1])
    why: dict[str, str] = {}
    layouts = _discover(model, example_input, traced, why)
    _CACHE[model] = (key, layouts, why)
    for owner, reason in why.items():
        log.debug("attention in '%s' offers no head choice: %s", owner or "<model>", reason)
    if reasons is not None:
        reasons.update(why)
    return dict(layouts)


def _discover(model: nn.Module, example_input, traced, why: dict[str, str]) -> dict[str, HeadLayout]:

    if traced is None:
        try:
            traced = trace_structure(model, example_input, prunable_layers(model))
        except ModelError as exc:
            why[""] = f"the model cannot be traced: {exc}"
            return {}
    sites = list(traced.attention)
    if not sites:
        return {}
    modes = {m: m.training for m in model.modules()}
    threads = torch.get_num_threads()
    model.eval()
    # many tiny forwards: on a busy machine several OpenMP threads make each one far slower (see build_model_graph)
    torch.set_num_threads(1)
    try:
        inputs = _capture(model, sorted({s.owner for s in sites}), example_input)
        layouts: dict[str, HeadLayout] = {}
        for site in sites:
            try:
                layout = _analyze_site(model, site, inputs.get(site.owner))
            except _Refused as exc:
                why[site.owner] = str(exc)
                continue
            except Exception as exc:  # an owner this analysis does not understand must not break the model's graph
                log.info("head analysis of '%s' failed: %s: %s", site.owner, type(exc).__name__, exc)
                why[site.owner] = f"its analysis failed ({type(exc).__name__}: {exc})"[:300]
                continue
            if layout.anchor in layouts:
                why[site.owner] = f"layer '{layout.anchor}' anchors two attentions"
                layouts.pop(layout.anchor)
                continue
            layouts[layout.anchor] = layout
        return layouts
    finally:
        torch.set_num_threads(threads)
        for m, training in modes.items():
            m.training = training


class _Refused(Exception):
    """Why an attention site offers no head choice."""


def _capture(model: nn.Module, owners: list[str], example_input) -> dict[str, tuple[tuple, dict]]:
    """(args, kwargs) of the first call of every owner module during one forward on ``example_input``."""
    if example_input is None:
        return {}
    seen: dict[str, tuple[tuple, dict]] = {}

    def hook(name):
        def record(_module, args, kwargs):
            if name not in seen:
                seen[name] = (tuple(_detach(a) for a in args), {k: _detach(v) for k, v in kwargs.items()})
        return record

    handles = []
    for name in owners:
        module = model.get_submodule(name) if name else model
        handles.append(module.register_forward_pre_hook(hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            model(example_input)
    except Exception as exc:  # the model's own errors
        raise ModelError(f"the model fails on its example input: {exc}",
                         hint="pass an example input of the shape the model expects") from exc
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _detach(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _probe(module: nn.Module, layers: list[str]) -> tuple[tuple, dict]:
    """A stand-in input when no example input was given: a (2, 5, width) token batch."""
    if isinstance(module, nn.MultiheadAttention):
        x = torch.randn(2, 5, module.embed_dim)
        return (x, x, x), {}
    first = module.get_submodule(layers[0]) if layers else None
    if not isinstance(first, nn.Linear):
        raise _Refused("no example input was given and the attention's input width is unknown")
    return (torch.randn(2, 5, first.in_features),), {}


def _rel(owner: str, layer: str) -> str:
    return layer[len(owner) + 1:] if owner else layer


def _full(owner: str, rel: str) -> str:
    return f"{owner}.{rel}" if owner else rel


# ------------------------------------------------------------------------------------ one site, by ops

def _analyze_site(model: nn.Module, site, call) -> HeadLayout:
    owner = model.get_submodule(site.owner) if site.owner else model
    if site.kind == "module":
        return _analyze_mha(site, owner, call)
    layers = [_rel(site.owner, name) for name in (*site.q, *site.k, *site.v)]
    if not site.q or not site.k or not site.v or not site.out:
        raise _Refused("the graph shows no q, k, v or output projection layer for this attention")
    args, kwargs = call if call is not None else _probe(owner, layers)
    gm, concrete = _trace_owner(owner, args, kwargs)
    run = _TagRun(gm)
    with torch.no_grad():
        run.run(*_positional(owner, args, kwargs))
    found = run.sites()
    matching = [s for s in found if s.roles and {s.roles[r][0] for r in "qkv"} == set(layers)]
    if not matching and len(found) == 1:
        matching = found
    if not matching:
        reasons = "; ".join(s.refusal for s in found if s.refusal) or run.refusal or \
            "the projections reach the attention op through ops that are not pure data movement"
        raise _Refused(reasons)
    head_site = matching[0]
    if head_site.refusal:
        raise _Refused(head_site.refusal)
    if _full(site.owner, head_site.out) not in site.out:
        raise _Refused("the output projection found in the owner is not the one the model graph shows")
    if head_site.heads < 2:
        raise _Refused("a single head: nothing to remove")
    base = HeadLayout(
        anchor=_full(site.owner, head_site.roles["q"][0]), owner=site.owner, heads=head_site.heads,
        q=(_full(site.owner, head_site.roles["q"][0]), head_site.roles["q"][1]),
        k=(_full(site.owner, head_site.roles["k"][0]), head_site.roles["k"][1]),
        v=(_full(site.owner, head_site.roles["v"][0]), head_site.roles["v"][1]),
        out=(_full(site.owner, head_site.out), head_site.out_heads), route="attributes")
    trials = _trial_keeps(base.heads)
    hd, hdv = base.head_dims
    counts = _counts(base.heads, hd, hdv)
    candidates = [(name, what) for name, value in vars(owner).items()
                  if type(value) is int for what, count in counts.items() if value == count]
    if len({name for name, _ in candidates}) == len(candidates) and len(candidates) <= 4:
        for size in range(len(candidates), 0, -1):
            for subset in itertools.combinations(candidates, size):
                layout = _replace(base, attributes=subset)
                if all(_trial(owner, layout, keep, args, kwargs) for keep in trials):
                    return layout
    if not site.owner:
        raise _Refused("the model's own forward uses the head count in a way no attribute update fixes "
                       "(and the model itself cannot be replaced by a rewritten graph)")
    if head_site.edit_refusal:
        raise _Refused(head_site.edit_refusal)
    layout = _replace(base, route="graph", edits=head_site.edits, concrete=tuple(concrete.items()))
    if all(_trial(owner, layout, keep, args, kwargs) for keep in trials):
        return layout
    raise _Refused("neither updating the owner's head-count attributes nor rewriting its graph keeps its "
                   "forward equal to the masked one")


def _counts(heads: int, hd: int, hdv: int) -> dict[str, int]:
    """What an owner attribute may count: heads, merged q/k width, merged v width (if it differs)."""
    counts = {"heads": heads, "width": heads * hd}
    if hdv != hd:
        counts["vwidth"] = heads * hdv
    return counts


def _replace(layout: HeadLayout, **changes) -> HeadLayout:
    from dataclasses import replace

    return replace(layout, **changes)


def _trial_keeps(heads: int) -> list[list[int]]:
    keeps = [list(range(1, heads))]  # drop the first head: every later index moves
    if heads >= 3:
        keeps.append([heads - 1])
    return keeps


def _trial(owner: nn.Module, layout: HeadLayout, keep: list[int], args, kwargs) -> bool:
    """Whether realizing ``layout`` with heads ``keep`` on a copy of ``owner`` equals masking it."""
    drop = [h for h in range(layout.heads) if h not in keep]
    local = localize(layout)
    masked = copy.deepcopy(owner)
    for pname, mask in head_masks(masked, local, drop).items():
        with torch.no_grad():
            masked.get_parameter(pname).mul_(mask)
    try:
        with torch.no_grad():
            expected = masked(*args, **kwargs)
            realized = shrink_attention(copy.deepcopy(owner), local, keep)
            got = realized(*args, **kwargs)
    except Exception as exc:  # a wrong head-count update fails in the user's forward
        log.debug("head realization trial of %s failed: %s", layout.owner or "<model>", exc)
        return False
    if layout.route == "module":  # the attention weights are not used (checked): compare the output only
        got, expected = got[0], expected[0]
    return _close(got, expected)


def _close(got, expected) -> bool:
    if isinstance(expected, torch.Tensor):
        scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
        return isinstance(got, torch.Tensor) and got.shape == expected.shape and \
            torch.allclose(got, expected, atol=1e-5 * scale, rtol=0)
    if isinstance(expected, tuple | list):
        return isinstance(got, tuple | list) and len(got) == len(expected) and \
            all(e is None or _close(g, e) for g, e in zip(got, expected, strict=True))
    return True


def localize(layout: HeadLayout) -> HeadLayout:
    """The layout with layer names relative to its owner."""
    def rel(part):
        return (_rel(layout.owner, part[0]), part[1])

    return _replace(layout, owner="", anchor=_rel(layout.owner, layout.anchor), q=rel(layout.q), k=rel(layout.k),
                    v=rel(layout.v), out=rel(layout.out))


def _trace_owner(owner: nn.Module, args, kwargs) -> tuple[fx.GraphModule, dict]:
    """torch.fx graph of ``owner`` that runs on ``args``; non-tensor arguments are specialized if needed."""
    try:
        gm = fx.symbolic_trace(owner)
        # a failing GraphModule prints its generated code to stderr: the failure is expected here
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            gm(*args, **kwargs)
        return gm, {}
    except Exception as first:  # dynamic code on None/bool arguments, proxies in control flow
        try:
            bound = inspect.signature(owner.forward).bind(*args, **kwargs)
            bound.apply_defaults()
            concrete = {name: value for name, value in bound.arguments.items()
                        if value is None or isinstance(value, bool | int | float | str)}
            gm = _trace_concrete(owner, concrete)
            with torch.no_grad():
                gm(*args, **kwargs)
            return gm, concrete
        except Exception as exc:
            raise _Refused(f"its module cannot be traced on its own by torch.fx ({first}; {exc})"[:300]) from exc


def _trace_concrete(owner: nn.Module, concrete: dict) -> fx.GraphModule:
    gm = fx.symbolic_trace(owner, concrete_args=dict(concrete))
    for node in gm.graph.nodes:  # fx renames specialized placeholders (mask -> mask_1): keep the call API
        if node.op == "placeholder":
            base = re.sub(r"_\d+$", "", str(node.target))
            if base in concrete:
                node.target = base
    gm.recompile()
    return gm


def _positional(owner: nn.Module, args, kwargs) -> list:
    params = list(inspect.signature(owner.forward).parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise _Refused("its forward takes *args/**kwargs")
    bound = inspect.signature(owner.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return [bound.arguments[p.name] for p in params]


# ---------------------------------------------------------------------------- feature-id propagation

_MOVE_METHODS = {"view", "reshape", "permute", "transpose", "flatten", "unflatten", "squeeze", "unsqueeze",
                 "unbind", "chunk", "split", "expand", "narrow", "swapaxes", "movedim", "__getitem__"}
_MOVE_FUNCS = {torch.reshape, torch.permute, torch.transpose, torch.flatten, torch.unflatten, torch.squeeze,
               torch.unsqueeze, torch.unbind, torch.chunk, torch.split, torch.narrow, torch.swapaxes,
               torch.movedim, operator.getitem, torch.cat, torch.concat}
_SAME_METHODS = {"contiguous", "clone", "to", "float", "type_as", "half", "double", "bfloat16"}
_SCALE_FUNCS = {operator.mul, operator.truediv, torch.mul, torch.div, operator.neg, torch.neg}
_SCALE_METHODS = {"mul", "div", "neg", "__mul__", "__truediv__"}
_SCORE_FUNCS = {operator.add, operator.sub, torch.add, torch.sub, torch.masked_fill, torch.where}
_SCORE_METHODS = {"add", "sub", "masked_fill", "__add__"}
_SOFTMAX = {torch.softmax, F.softmax}
_MATMUL_FUNCS = {operator.matmul, torch.matmul, torch.bmm}
_NORM_FUNCS = {F.layer_norm, F.rms_norm}
_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim"}
_SHAPE_METHODS = {"size", "dim", "numel"}


@dataclass
class _Site:
    op: fx.Node
    heads: int
    lead: tuple[int, ...]
    head_of: list[int]  # head of each flattened lead position (batch x heads)
    ids: dict[str, list[tuple[int, ...]]]  # role -> per head, feature ids
    score_base: int = -1
    out_base: int = -1
    roles: dict[str, tuple[str, Heads]] = field(default_factory=dict)
    out: str = ""
    out_heads: Heads = ()
    refusal: str = ""
    edits: tuple = ()
    edit_refusal: str = ""


class _TagRun(fx.Interpreter):
    """Runs an owner graph and, beside each value, a tensor of the feature ids it holds."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)  # sizes are read again after the run
        self.tags: dict[fx.Node, object] = {}
        self.pure: dict[fx.Node, bool] = {}  # reached from a Linear by data movement and scaling only
        self.ranges: list[tuple[int, int, str, object]] = []  # (start, stop, kind, owner)
        self.next_id = 0
        self.found: list[_Site] = []
        self.consumers: list[tuple[fx.Node, fx.Node]] = []  # (Linear node, its tagged input node)
        self.norms: list[tuple[torch.Tensor, int]] = []
        self.opaque: list[tuple] = []  # (node, tagged input, function, args, kwargs, result)
        self.readers: dict[fx.Node, tuple] = {}  # untagged ops reading tagged values: (args, kwargs, result)
        self.operands: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []  # (site, operand, score shape)
        self.refusal = ""
        self._projection_node: fx.Node | None = None
        self._unique: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ids
    def _alloc(self, n: int, kind: str, owner: object) -> int:
        start = self.next_id
        self.next_id += n
        self.ranges.append((start, self.next_id, kind, owner))
        return start

    def range_of(self, ident: int) -> tuple[int, int, str, object]:
        for entry in self.ranges:
            if entry[0] <= ident < entry[1]:
                return entry
        raise KeyError(ident)

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        try:
            self._tag(n, result)
        except Exception as exc:  # an op we cannot mirror on ids: the ids stop here
            log.debug("feature ids stop at %s: %r", n.name, exc)
            self.tags.pop(n, None)
        if n not in self.tags and n.op in ("call_function", "call_method") and self._tagged(n):
            # kept to tell later whether this op reads the head features' values or only their metadata
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: _detach(self.env[a]))
            self.readers[n] = (args, kwargs, result)
        return result

    def _reads_values(self, n: fx.Node) -> bool:
        """Whether the untagged op ``n`` depends on the values of its tagged inputs (not just their shape)."""
        args, kwargs, result = self.readers.get(n, (None, None, None))
        if args is None:
            return True
        if not isinstance(result, torch.Tensor):
            return result is not None and not isinstance(result, bool | int | float | torch.Size | torch.dtype)
        tagged = set(self._tagged(n))
        probe = fx.node.map_arg((n.args, n.kwargs),
                                lambda a: _detach(self.env[a]) + torch.randn_like(self.env[a])
                                if a in tagged and isinstance(self.env[a], torch.Tensor) else _detach(self.env[a]))
        try:
            fn = getattr(probe[0][0], str(n.target)) if n.op == "call_method" else n.target
            out = fn(*(probe[0][1:] if n.op == "call_method" else probe[0]), **probe[1])
        except Exception:  # the op's own checks on values
            return True
        return not (isinstance(out, torch.Tensor) and out.shape == result.shape and torch.equal(out, result))

    def _tagged(self, n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if a in self.tags]

    def _kind(self, tag) -> str:
        first = tag if isinstance(tag, torch.Tensor) else next(t for t in tag if isinstance(t, torch.Tensor))
        return self.range_of(int(first.reshape(-1)[0]))[2]

    def _tag(self, n: fx.Node, result) -> None:
        tagged = self._tagged(n)
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            if isinstance(module, nn.Linear) and isinstance(result, torch.Tensor):
                if tagged:
                    self.consumers.append((n, tagged[0]))
                start = self._alloc(module.out_features, "feature", str(n.target))
                self.tags[n] = torch.arange(start, self.next_id).expand(result.shape).contiguous()
                self.pure[n] = True
                return
            if len(tagged) != 1 or n.args[0] is not tagged[0]:
                return
            src = tagged[0]
            if isinstance(module, nn.Identity | nn.Dropout):
                self._pass(n, result, src)
            elif isinstance(module, nn.LayerNorm | nn.RMSNorm) and self._kind(self.tags[src]) == "feature":
                self._pass(n, result, src, pure=False)
                self.norms.append((self.tags[src], len(module.normalized_shape)))
            elif isinstance(module, nn.Softmax) and self._kind(self.tags[src]) == "score" and \
                    module.dim in (-1, result.dim() - 1):
                self._pass(n, result, src)
            return
        if n.op not in ("call_function", "call_method") or not tagged:
            return
        target = n.target
        method = n.op == "call_method"
        others = [a for a in n.all_input_nodes if a not in self.tags]
        tensor_others = [a for a in others if isinstance(self.env.get(a), torch.Tensor)]
        if (method and target in _MATMUL_METHODS_) or (not method and target in _MATMUL_FUNCS):
            self._matmul(n, result)
            return
        if not method and target is F.scaled_dot_product_attention:
            self._sdpa(n, result)
            return
        if (method and target in _MOVE_METHODS) or (not method and target in _MOVE_FUNCS):
            if tensor_others:
                return
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), self._mirror)
            # ids may sit in another memory layout than the values (a norm's output is contiguous, the ids
            # passed through it are not), so a view of the values is a reshape of the ids
            name = "reshape" if target == "view" else str(target)
            tag = getattr(args[0], name)(*args[1:], **kwargs) if method else target(*args, **kwargs)
            if _same_structure(tag, result):
                self.tags[n] = tag
                self.pure[n] = all(self.pure.get(a, False) for a in tagged)
            return
        if len(tagged) != 1 or (n.args and n.args[0] is not tagged[0] and target not in _SCALE_FUNCS):
            return
        src = tagged[0]
        kind = self._kind(self.tags[src])
        scale = ((method and target in _SCALE_METHODS) or (not method and target in _SCALE_FUNCS)) and \
            all(self.env[a].numel() == 1 for a in tensor_others)
        if (method and target in _SAME_METHODS) or scale:
            self._pass(n, result, src)
        elif kind == "score" and ((method and target in _SCORE_METHODS | _SCALE_METHODS) or
                                  (not method and target in _SCORE_FUNCS | _SCALE_FUNCS)):
            site = self.range_of(int(self.tags[src].reshape(-1)[0]))[3]
            for a in tensor_others:
                self.operands.append((site, tuple(self.env[a].shape), tuple(result.shape)))
            self._pass(n, result, src)
        elif kind == "score" and ((method and target == "softmax") or (not method and target in _SOFTMAX)):
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
            if dim in (-1, result.dim() - 1):
                self._pass(n, result, src)
        elif kind == "feature" and not method and target in _NORM_FUNCS:
            shape = n.args[1] if len(n.args) > 1 else n.kwargs.get("normalized_shape")
            self._pass(n, result, src, pure=False)
            self.norms.append((self.tags[src], len(shape) if isinstance(shape, tuple | list) else 1))
        elif not method and not _is_torch(target) and isinstance(result, torch.Tensor) and \
                result.shape == self.tags[src].shape:
            # A function the tracer keeps opaque (fx.wrap, e.g. a helper adding an optional mask): pass the
            # ids on, and check once the heads are known that it keeps each head's values to that head.
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: _detach(self.env[a]))
            self.opaque.append((n, src, target, args, kwargs, result.detach().clone()))
            self._pass(n, result, src, pure=False)

    def _mirror(self, a: fx.Node):
        return self.tags[a] if a in self.tags else self.env[a]

    def _pass(self, n: fx.Node, result, src: fx.Node, pure: bool = True) -> None:
        if isinstance(result, torch.Tensor) and result.shape == self.tags[src].shape:
            self.tags[n] = self.tags[src]
            self.pure[n] = pure and self.pure.get(src, False)

    # attention ops
    def _matmul(self, n: fx.Node, result) -> None:
        a, b = n.args[0], n.args[1]
        if a not in self.tags or b not in self.tags:
            return
        ka, kb = self._kind(self.tags[a]), self._kind(self.tags[b])
        if ka == kb == "feature":  # q @ k^T
            q, k = self.tags[a], self.tags[b].transpose(-1, -2)
            site = self._site(n, {"q": q, "k": k})
            if site is not None:
                site.score_base = self._alloc(site.heads, "score", len(self.found) - 1)
                heads = torch.tensor(site.head_of).reshape(site.lead)[..., None, None]
                self.tags[n] = (site.score_base + heads).expand(result.shape).contiguous()
        elif ka == "score" and kb == "feature":  # softmax(...) @ v
            index = self.range_of(int(self.tags[a].reshape(-1)[0]))[3]
            site = self.found[index]
            scores = self.tags[a] - site.score_base
            v = self.tags[b]
            if tuple(scores.shape[:-2]) != site.lead or tuple(v.shape[:-2]) != site.lead:
                site.refusal = "scores and values are batched differently"
                return
            flat = scores.reshape(-1, *scores.shape[-2:])
            if not (flat == flat[:, :1, :1]).all() or flat[:, 0, 0].tolist() != site.head_of:
                site.refusal = "the scores mix heads"
                return
            rows = _rows(v)
            if rows is None:
                site.refusal = "value features vary over tokens"
                return
            per_head: dict[int, tuple[int, ...]] = {}
            for p, head in enumerate(site.head_of):
                if per_head.setdefault(head, rows[p]) != rows[p]:
                    site.refusal = "a head's values differ between batch items"
                    return
            site.ids["v"] = [per_head[h] for h in range(site.heads)]
            if not self.pure.get(b, False):
                site.refusal = "the values pass through an op that does not keep zeros zero (e.g. a norm)"
            site.op = n
            self._out_tag(n, site, result)

    def _sdpa(self, n: fx.Node, result) -> None:
        names = ("query", "key", "value")
        nodes = [n.args[i] if len(n.args) > i else n.kwargs.get(names[i]) for i in range(3)]
        if not all(isinstance(x, fx.Node) and x in self.tags for x in nodes):
            return
        if any(self._kind(self.tags[x]) != "feature" for x in nodes):
            return
        site = self._site(n, dict(zip("qkv", (self.tags[x] for x in nodes), strict=True)))
        if site is None:
            return
        if n.kwargs.get("enable_gqa"):
            site.refusal = "grouped-query attention shares k/v heads"
        if not self.pure.get(nodes[2], False):
            site.refusal = "the values pass through an op that does not keep zeros zero (e.g. a norm)"
        mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
        if isinstance(mask, fx.Node) and isinstance(self.env.get(mask), torch.Tensor):
            shape = tuple(self.tags[nodes[0]].shape[:-1]) + (self.tags[nodes[1]].shape[-2],)
            self.operands.append((len(self.found) - 1, tuple(self.env[mask].shape), shape))
        self._out_tag(n, site, result)

    def _site(self, n: fx.Node, tags: dict[str, torch.Tensor]) -> _Site | None:
        lead = tuple(next(iter(tags.values())).shape[:-2])
        if any(tuple(t.shape[:-2]) != lead for t in tags.values()):
            return None
        rows = {role: _rows(t) for role, t in tags.items()}
        if any(r is None for r in rows.values()):
            return None
        keys = [tuple(rows[role][p] for role in tags) for p in range(len(rows["q"]))]
        unique = sorted(set(keys), key=lambda key: min(key[0]))
        index = {key: h for h, key in enumerate(unique)}
        site = _Site(op=n, heads=len(unique), lead=lead, head_of=[index[key] for key in keys],
                     ids={role: [key[r] for key in unique] for r, role in enumerate(tags)})
        for role, heads in site.ids.items():
            flat = [i for head in heads for i in head]
            if len(flat) != len(set(flat)):
                site.refusal = f"a {role} feature belongs to several heads"
        self.found.append(site)
        return site

    def _out_tag(self, n: fx.Node, site: _Site, result) -> None:
        hdv = len(site.ids["v"][0])
        site.out_base = self._alloc(site.heads * hdv, "out", len(self.found) - 1)
        heads = torch.tensor(site.head_of).reshape(site.lead)[..., None, None]
        tag = site.out_base + heads * hdv + torch.arange(hdv)
        if tuple(result.shape[-1:]) != (hdv,):
            site.refusal = "the attention output is not (..., tokens, head_dim)"
            return
        self.tags[n] = tag.expand(result.shape).contiguous()
        self.pure[n] = True

    # after the run
    def sites(self) -> list[_Site]:
        for index, site in enumerate(self.found):
            if not site.refusal:
                self._finish(index, site)
        return self.found

    def _finish(self, index: int, site: _Site) -> None:
        if "v" not in site.ids or site.out_base < 0:
            site.refusal = site.refusal or "no value matmul follows the scores"
            return
        heads_of = torch.full((self.next_id,), -1, dtype=torch.long)
        spans: dict[str, tuple[int, int, object]] = {}
        for role in "qkv":
            span = None
            for h, ids in enumerate(site.ids[role]):
                for ident in ids:
                    start, stop, kind, owner = self.range_of(ident)
                    if kind != "feature" or (span is not None and span != (start, stop, owner)):
                        site.refusal = f"the {role} features come from more than one layer"
                        return
                    span = (start, stop, owner)
                    heads_of[ident] = h
            spans[role] = span
            site.roles[role] = (str(span[2]), tuple(tuple(i - span[0] for i in ids) for ids in site.ids[role]))
        for role, (start, stop, _) in spans.items():  # every output of a q/k/v layer must be head features
            used = {i for r in "qkv" if spans[r] == spans[role] for ids in site.ids[r] for i in ids}
            if used != set(range(start, stop)):
                site.refusal = f"part of layer '{site.roles[role][0]}'s output is not attention heads"
                return
        if site.score_base >= 0:
            heads_of[site.score_base:site.score_base + site.heads] = torch.arange(site.heads)
        hdv = len(site.ids["v"][0])
        heads_of[site.out_base:site.out_base + site.heads * hdv] = torch.arange(site.heads).repeat_interleave(hdv)
        if not self._projection(site, hdv):
            return
        if not self._contained(site, heads_of):
            return
        for tag, ndims in self.norms:
            heads = heads_of[tag]
            if (heads >= 0).any():
                flat = heads.reshape(-1, int(torch.tensor(tag.shape[-ndims:]).prod()))
                if not (flat == flat[:, :1]).all():
                    site.refusal = "a norm on q or k mixes heads"
                    return
        for node, src, fn, args, kwargs, result in self.opaque:
            if self._touches(self.tags[src], heads_of) and not _head_local(fn, args, kwargs, result,
                                                                         node.args.index(src), heads_of[self.tags[src]]):
                site.refusal = f"'{node.name}' mixes heads"
                return
        varying = _varying_dims(torch.tensor(site.head_of).reshape(site.lead))
        for op_site, operand, shape in self.operands:
            if op_site != index:
                continue
            aligned = (1,) * (len(shape) - len(operand)) + operand
            if len(aligned) != len(shape) or any(aligned[d] != 1 for d in varying):
                site.refusal = f"a mask or bias of shape {operand} on the scores differs per head"
                return
        site.edits, site.edit_refusal = self._edits(heads_of, site.heads)

    def _projection(self, site: _Site, hdv: int) -> bool:
        out_range = range(site.out_base, site.out_base + site.heads * hdv)
        projections = [(n, src) for n, src in self.consumers
                       if isinstance(self.tags[src], torch.Tensor) and int(self.tags[src].reshape(-1)[0]) in out_range]
        if len(projections) != 1:
            stops = sorted({user.name for node, tag in self.tags.items() if isinstance(tag, torch.Tensor)
                            and tag.numel() and int(tag.reshape(-1)[0]) in out_range
                            for user in node.users if user not in self.tags and user.op != "output"})
            site.refusal = "the merged heads do not feed exactly one Linear" + (
                f" (they stop at {', '.join(stops)}, which is not data movement)" if stops else "")
            return False
        node, src = projections[0]
        tag = self.tags[src]
        flat = tag.reshape(-1, tag.shape[-1])
        if not (flat == flat[:1]).all() or sorted(flat[0].tolist()) != list(out_range):
            site.refusal = "the output projection's input is not exactly the merged heads"
            return False
        if not self.pure.get(src, False):
            site.refusal = "the merged heads pass through an op that does not keep zeros zero"
            return False
        cols = flat[0] - site.out_base
        site.out = str(node.target)
        site.out_heads = tuple(tuple(c for j in range(hdv) for c in (cols == h * hdv + j).nonzero().flatten().tolist())
                               for h in range(site.heads))
        self._projection_node = node
        return True

    def _touches(self, tag: torch.Tensor, heads_of: torch.Tensor) -> bool:
        key = id(tag)
        if key not in self._unique:
            self._unique[key] = (tag, torch.unique(tag))  # keep the tensor alive so its id stays unique
        return bool((heads_of[self._unique[key][1]] >= 0).any())

    def _contained(self, site: _Site, heads_of: torch.Tensor) -> bool:
        """Nothing but the attention itself reads the head features, scores or merged heads."""
        def carries(node: fx.Node) -> bool:
            tag = self.tags.get(node)
            tensors = [tag] if isinstance(tag, torch.Tensor) else [t for t in tag or () if isinstance(t, torch.Tensor)]
            return any(t.numel() and self._touches(t, heads_of) for t in tensors)

        for node in self.tags:
            if not carries(node):
                continue
            for user in node.users:
                if user is site.op or user is self._projection_node or carries(user):
                    continue
                if user.op == "call_function" and user.target is getattr and user.args[1] in _SHAPE_ATTRS:
                    continue
                if user.op == "call_method" and user.target in _SHAPE_METHODS:
                    continue
                if user in self.readers and not self._reads_values(user):
                    continue  # e.g. a helper that builds a mask of the scores' dtype and shape
                site.refusal = f"'{user.name}' also reads the attention's head features"
                return False
        return True

    def _edits(self, heads_of: torch.Tensor, heads: int) -> tuple[tuple, str]:
        """Size arguments along head axes: (node, path into args) to scale by kept / all heads."""
        edits: list[tuple[str, tuple[int, ...]]] = []
        for node, tag in self.tags.items():
            if node.op not in ("call_method", "call_function"):
                continue
            source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            src_tag = self.tags.get(source) if source is not None else None
            out = tag if isinstance(tag, torch.Tensor) else None
            if not any(isinstance(t, torch.Tensor) and self._touches(t, heads_of) for t in (out, src_tag)):
                continue
            name, method = str(node.target), node.op == "call_method"
            if out is not None and ((method and name in ("view", "reshape", "expand"))
                                    or (not method and node.target is torch.reshape)):
                packed = not method or (len(node.args) == 2 and isinstance(node.args[1], tuple | list))
                sizes = node.args[1] if packed else node.args[1:]
                if not isinstance(sizes, tuple | list) or len(sizes) != out.dim():
                    return (), f"'{node.name}' takes its sizes as one run-time value"
                for d in _varying_dims(heads_of[out]):
                    if not self._scalable(sizes[d], heads):
                        return (), f"size {sizes[d]!r} of '{node.name}' is not a multiple of the head count"
                    if sizes[d] != -1:
                        edits.append((node.name, (1, d) if packed else (1 + d,)))
            elif out is not None and name == "unflatten" and isinstance(src_tag, torch.Tensor):
                dim, sizes = node.args[1], node.args[2]
                dim = dim if dim >= 0 else src_tag.dim() + dim
                for d in _varying_dims(heads_of[out]):
                    if dim <= d < dim + len(sizes):
                        if not self._scalable(sizes[d - dim], heads):
                            return (), f"'{node.name}' splits a head axis unevenly"
                        if sizes[d - dim] != -1:
                            edits.append((node.name, (2, d - dim)))
            elif name == "split" and isinstance(src_tag, torch.Tensor):
                sizes = node.args[1]
                dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
                if dim % src_tag.dim() in _varying_dims(heads_of[src_tag]):
                    many = isinstance(sizes, tuple | list)
                    for i, size in enumerate(sizes if many else [sizes]):
                        if not self._scalable(size, heads):
                            return (), f"'{node.name}' splits a head axis unevenly"
                        edits.append((node.name, (1, i) if many else (1,)))
            elif isinstance(src_tag, torch.Tensor) and (name in ("narrow", "__getitem__")
                                                        or node.target is operator.getitem):
                varying = _varying_dims(heads_of[src_tag])
                if varying and not _index_spares(node, src_tag.dim(), varying):
                    return (), f"'{node.name}' indexes along a head axis"
        return tuple(edits), ""

    def _scalable(self, size, heads: int) -> bool:
        value = self.env.get(size) if isinstance(size, fx.Node) else size
        return isinstance(value, int) and (value == -1 or value % heads == 0)


_MATMUL_METHODS_ = {"matmul", "bmm", "__matmul__"}


def _is_torch(fn) -> bool:
    return (getattr(fn, "__module__", None) or "").startswith(("torch", "_operator", "operator", "builtins")) or \
        fn in (getattr, operator.getitem)


def _head_local(fn, args, kwargs, result: torch.Tensor, position: int, heads: torch.Tensor) -> bool:
    """Whether changing one head's entries of argument ``position`` changes only that head's result."""
    for head in heads.unique().tolist():
        if head < 0:
            continue
        inside = heads == head
        probe = list(args)
        probe[position] = torch.where(inside, args[position] + torch.randn_like(args[position]), args[position])
        try:
            out = fn(*probe, **kwargs)
        except Exception:  # the function's own checks
            return False
        if not isinstance(out, torch.Tensor) or out.shape != result.shape or \
                not torch.equal(out[~inside], result[~inside]):
            return False
    return True


def _index_spares(node: fx.Node, ndim: int, dims: list[int]) -> bool:
    """Whether a tensor index (``x[...]``) takes every entry along each of ``dims``."""
    if node.target == "narrow":
        return False
    index = node.args[1]
    index = tuple(index) if isinstance(index, tuple | list) else (index,)
    consumed = [e for e in index if e is not None and e is not Ellipsis]
    positions: list[object] = []
    for entry in index:
        if entry is Ellipsis:
            positions.extend([slice(None)] * (ndim - len(consumed)))
        elif entry is not None:
            positions.append(entry)
    positions.extend([slice(None)] * (ndim - len(positions)))
    return all(positions[d] == slice(None) for d in dims)


def _same_structure(tag, value) -> bool:
    if isinstance(value, torch.Tensor):
        return isinstance(tag, torch.Tensor) and tag.shape == value.shape
    if isinstance(value, tuple | list):
        return isinstance(tag, tuple | list) and len(tag) == len(value) and \
            all(_same_structure(t, v) for t, v in zip(tag, value, strict=True))
    return False


def _rows(tag: torch.Tensor) -> list[tuple[int, ...]] | None:
    """Per flattened lead position, the feature ids along the last axis (None if they vary over tokens)."""
    flat = tag.reshape(-1, *tag.shape[-2:])
    if not (flat == flat[:, :1, :]).all():
        return None
    return [tuple(row) for row in flat[:, 0, :].tolist()]


def _varying_dims(heads: torch.Tensor) -> list[int]:
    return [d for d in range(heads.dim()) if heads.shape[d] > 1 and (heads != heads.narrow(d, 0, 1)).any()]


# ------------------------------------------------------------------------------------------ realizing

def head_masks(root: nn.Module, layout: HeadLayout, drop: list[int]) -> dict[str, torch.Tensor]:
    """Keep-masks (by parameter name under ``root``) zeroing heads ``drop``: their q/k/v rows (biases too)
    and output-projection columns. A masked head computes zero values, so it contributes exactly zero."""
    if layout.route == "module":
        return _mha_masks(root, layout, drop)
    masks: dict[str, torch.Tensor] = {}
    for layer, heads in (layout.q, layout.k, layout.v):
        _merge(masks, _line_masks(root, layer, [i for h in drop for i in heads[h]], "out"))
    _merge(masks, _line_masks(root, layout.out[0], [i for h in drop for i in layout.out[1][h]], "in"))
    return masks


def _merge(masks: dict[str, torch.Tensor], more: dict[str, torch.Tensor]) -> None:
    for key, mask in more.items():
        masks[key] = masks[key] & mask if key in masks else mask


def _line_masks(root: nn.Module, layer: str, idxs: list[int], kind: str) -> dict[str, torch.Tensor]:
    linear = root.get_submodule(layer) if layer else root
    index = torch.tensor(idxs, dtype=torch.long)
    weight = torch.ones_like(linear.weight, dtype=torch.bool)
    masks = {}
    if kind == "out":
        weight[index] = False
        if linear.bias is not None:
            bias = torch.ones_like(linear.bias, dtype=torch.bool)
            bias[index] = False
            masks[_pname(layer, "bias")] = bias
    else:
        weight[:, index] = False
    masks[_pname(layer, "weight")] = weight
    return masks


def _pname(layer: str, pname: str) -> str:
    return f"{layer}.{pname}" if layer else pname


def shrink_attention(owner: nn.Module, layout: HeadLayout, keep: list[int],
                     kept_out: dict[str, list[int]] | None = None,
                     kept_in: dict[str, list[int]] | None = None) -> nn.Module:
    """``owner`` (layer names in ``layout`` relative to it) with only heads ``keep``; returns the module to
    install in its place (``owner`` itself unless its graph was rewritten or it is replaced).

    ``kept_out``/``kept_in`` map a layer to the ORIGINAL indices of the rows/columns it still has (after
    other removals) and are updated.
    """
    kept_out = {} if kept_out is None else kept_out
    kept_in = {} if kept_in is None else kept_in
    if layout.route == "module":
        return _mha_replacement(owner, layout, keep)
    drop = set(range(layout.heads)) - set(keep)
    rows: dict[str, set[int]] = {}
    for layer, heads in (layout.q, layout.k, layout.v):
        rows.setdefault(layer, set()).update(i for h in drop for i in heads[h])
    for layer, removed in rows.items():
        linear = owner.get_submodule(layer)
        current = kept_out.get(layer, list(range(linear.out_features)))
        keep_rows = [orig for orig in current if orig not in removed]
        set_submodule(owner, layer, _shrink(linear, [current.index(o) for o in keep_rows], "out"))
        kept_out[layer] = keep_rows
    out_layer, out_heads = layout.out
    linear = owner.get_submodule(out_layer)
    removed = {i for h in drop for i in out_heads[h]}
    current = kept_in.get(out_layer, list(range(linear.in_features)))
    keep_cols = [orig for orig in current if orig not in removed]
    set_submodule(owner, out_layer, _shrink(linear, [current.index(o) for o in keep_cols], "in"))
    kept_in[out_layer] = keep_cols
    hd, hdv = layout.head_dims
    counts = _counts(len(keep), hd, hdv)
    for name, what in layout.attributes:
        setattr(owner, name, counts[what])
    if layout.route != "graph":
        return owner
    gm = _trace_concrete(owner, dict(layout.concrete)) if layout.concrete else fx.symbolic_trace(owner)
    nodes = {node.name: node for node in gm.graph.nodes}
    for name, path in layout.edits:
        node = nodes.get(name)
        if node is None:
            raise PlanError(f"cannot rewrite the attention module's graph: node '{name}' is gone",
                            hint="realize the plan on the model it was decided on")
        node.args = _scaled(gm.graph, node, node.args, path, len(keep), layout.heads)
    gm.recompile()
    return gm


def _scaled(graph: fx.Graph, node: fx.Node, args, path: tuple[int, ...], new: int, old: int):
    items = list(args)
    head, rest = path[0], path[1:]
    if rest:
        items[head] = type(items[head])(_scaled(graph, node, items[head], rest, new, old))
        return tuple(items)
    value = items[head]
    if isinstance(value, fx.Node):
        with graph.inserting_before(node):
            items[head] = graph.call_function(operator.floordiv,
                                              (graph.call_function(operator.mul, (value, new)), old))
    else:
        items[head] = value * new // old
    return tuple(items)


def _shrink(linear: nn.Linear, index: list[int], kind: str) -> nn.Linear:
    idx = torch.tensor(index, dtype=torch.long)
    if kind == "out":
        new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
        new.weight.data = linear.weight.data[idx].clone()
        if linear.bias is not None:
            new.bias.data = linear.bias.data[idx].clone()
    else:
        new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None)
        new.weight.data = linear.weight.data[:, idx].clone()
        if linear.bias is not None:
            new.bias.data = linear.bias.data.clone()
    return new.to(linear.weight.device, linear.weight.dtype)


def head_energy(model: nn.Module, layout: HeadLayout) -> torch.Tensor:
    """Per head: squared L2 norm of its q/k/v rows (biases included) and output-projection columns."""
    energy = torch.zeros(layout.heads, dtype=torch.float64)
    if layout.route == "module":
        mha = model.get_submodule(layout.owner) if layout.owner else model
        weight, bias = packed_in_proj(mha)
        rows = weight.detach().double().pow(2).sum(1)
        if bias is not None:
            rows = rows + bias.detach().double().pow(2)
        for _, heads in (layout.q, layout.k, layout.v):
            energy += rows[torch.tensor(heads)].sum(1)
        cols = mha.out_proj.weight.detach().double().pow(2).sum(0)
        return energy + cols[torch.tensor(layout.out[1])].sum(1)
    for layer, heads in (layout.q, layout.k, layout.v):
        linear = model.get_submodule(layer)
        rows = linear.weight.detach().double().pow(2).sum(1)
        if linear.bias is not None:
            rows = rows + linear.bias.detach().double().pow(2)
        energy += rows[torch.tensor(heads)].sum(1)
    cols = model.get_submodule(layout.out[0]).weight.detach().double().pow(2).sum(0)
    return energy + cols[torch.tensor(layout.out[1])].sum(1)


# ------------------------------------------------------------------------------ nn.MultiheadAttention

def _analyze_mha(site, mha: nn.MultiheadAttention, call) -> HeadLayout:
    if not site.owner:
        raise _Refused("the model itself is an nn.MultiheadAttention (it cannot be replaced in place)")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise _Refused("nn.MultiheadAttention with add_bias_kv / add_zero_attn is not supported")
    if mha.num_heads < 2:
        raise _Refused("a single head: nothing to remove")
    args, kwargs = call if call is not None else _probe(mha, [])
    bound = inspect.signature(mha.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    need_weights = bound.arguments.get("need_weights", True)
    if need_weights and site.weights_used is not False:
        raise _Refused("its attention weights are used (or torch.export traced through it and cannot tell): "
                       "they change when heads go")
    mask = bound.arguments.get("attn_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 3 and mask.shape[0] > 1:
        raise _Refused("its attn_mask differs per head")
    heads, hd, embed = mha.num_heads, mha.head_dim, mha.embed_dim
    per = {role: tuple(tuple(base + h * hd + i for i in range(hd)) for h in range(heads))
           for role, base in (("q", 0), ("k", embed), ("v", 2 * embed))}
    out = tuple(tuple(h * hd + i for i in range(hd)) for h in range(heads))
    layout = HeadLayout(anchor=f"{site.owner}.out_proj" if site.owner else "out_proj", owner=site.owner,
                        heads=heads, q=(site.owner, per["q"]), k=(site.owner, per["k"]), v=(site.owner, per["v"]),
                        out=(f"{site.owner}.out_proj" if site.owner else "out_proj", out), route="module")
    for keep in _trial_keeps(heads):
        if not _trial(mha, layout, keep, args, kwargs):
            raise _Refused("a pruned replacement does not reproduce the masked nn.MultiheadAttention")
    return layout


def _mha_masks(root: nn.Module, layout: HeadLayout, drop: list[int]) -> dict[str, torch.Tensor]:
    name = layout.q[0]
    mha = root.get_submodule(name) if name else root
    embed = mha.embed_dim
    index = torch.tensor([i for role in (layout.q, layout.k, layout.v) for h in drop for i in role[1][h]],
                         dtype=torch.long)
    masks = {}
    if mha.in_proj_weight is not None:
        mask = torch.ones_like(mha.in_proj_weight, dtype=torch.bool)
        mask[index] = False
        masks[_pname(name, "in_proj_weight")] = mask
    else:
        for part, pname in enumerate(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
            mask = torch.ones_like(getattr(mha, pname), dtype=torch.bool)
            mask[index[(index >= part * embed) & (index < (part + 1) * embed)] - part * embed] = False
            masks[_pname(name, pname)] = mask
    if mha.in_proj_bias is not None:
        mask = torch.ones_like(mha.in_proj_bias, dtype=torch.bool)
        mask[index] = False
        masks[_pname(name, "in_proj_bias")] = mask
    mask = torch.ones_like(mha.out_proj.weight, dtype=torch.bool)
    mask[:, torch.tensor([i for h in drop for i in layout.out[1][h]], dtype=torch.long)] = False
    masks[_pname(name, "out_proj.weight")] = mask
    return masks


def _mha_replacement(mha: nn.Module, layout: HeadLayout, keep: list[int]) -> nn.Module:
    """A :class:`PrunedMultiheadAttention` with heads ``keep`` of ``mha``: the original module, or the stand-in
    realization already put in its place when channel pruning narrowed its embedding (its q/k/v rows and
    out_proj columns, which the head indices address, are untouched by that)."""
    inner = layout.heads * layout.head_dims[0]
    full = (isinstance(mha, nn.MultiheadAttention) and mha.embed_dim == inner) or \
        (isinstance(mha, PrunedMultiheadAttention) and mha.inner_dim == inner)
    if not full or mha.num_heads != layout.heads:
        raise PlanError("the nn.MultiheadAttention whose heads the plan removes was changed by another "
                        "assignment", hint="assign head patterns to one layer of each attention only")
    weight, bias = packed_in_proj(mha)
    rows = torch.tensor([i for role in (layout.q, layout.k, layout.v) for h in keep for i in role[1][h]])
    cols = torch.tensor([i for h in keep for i in layout.out[1][h]])
    return PrunedMultiheadAttention(
        weight.detach()[rows].clone(), None if bias is None else bias.detach()[rows].clone(),
        mha.out_proj.weight.detach()[:, cols].clone(),
        None if mha.out_proj.bias is None else mha.out_proj.bias.detach().clone(),
        heads=len(keep), batch_first=mha.batch_first, dropout=mha.dropout,
        kdim=mha.kdim, vdim=mha.vdim)
