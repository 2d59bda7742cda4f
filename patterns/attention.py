"""Attention modules as layers of the channel graph: ``nn.MultiheadAttention``'s embedding width.

An ``nn.MultiheadAttention`` runs its projections through ``F.linear`` on its own parameters, never through a
Linear module, so torch-pruning's trace walks into its internals (the transposes and the view into heads,
whose shapes say nothing about the embedding) and a residual stream through it was a coupling barrier.

For self-attention (query, key and value the same tensor) the module is one layer as far as the embedding is
concerned: its input channels are the columns of its q/k/v projection, its output channels the rows of its
``out_proj``, and nothing inside couples the two (the heads have their own width). So while the dependency
graph is traced, each self-attention call is made one autograd node whose only input is the query
(:func:`opaque_self_attention`), and :func:`embedding_pruner` tells torch-pruning how wide that layer is on
each side. A call with a different key or value (cross-attention) is traced as before, and its groups stay
barriers: its key and value come from other channels than its query.

``nn.MultiheadAttention`` cannot be narrowed in place (its q/k/v width must equal ``embed_dim``), so a
realized model gets :class:`PrunedMultiheadAttention`, the same computation with free widths: fewer heads
(head pruning, :mod:`patterns.heads`), a narrower input or output embedding (channel pruning), or both.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from patterns.errors import PlanError


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with free widths: fewer heads (its q/k/v width, heads x head_dim, below the
    embedding) and a narrower input (``in_proj_weight`` columns) or output (``out_proj`` rows) embedding,
    which the torch module does not allow. Same call signature; returns ``(output, None)`` (the pruned
    model was checked not to read the attention weights)."""

    def __init__(self, in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor | None, out_weight: torch.Tensor,
                 out_bias: torch.Tensor | None, *, heads: int, batch_first: bool, dropout: float,
                 kdim: int, vdim: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.inner_dim = out_weight.shape[1]
        self.head_dim = self.inner_dim // heads
        self.embed_dim = out_weight.shape[0]
        self.batch_first = batch_first
        self.dropout = dropout
        self.kdim, self.vdim = kdim, vdim
        self.in_proj_weight = nn.Parameter(in_proj_weight)
        self.in_proj_bias = nn.Parameter(in_proj_bias) if in_proj_bias is not None else None
        self.out_proj = nn.Linear(self.inner_dim, self.embed_dim, bias=out_bias is not None)
        self.out_proj.weight.data = out_weight
        if out_bias is not None:
            self.out_proj.bias.data = out_bias

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        packed = query is key and key is value  # self-attention
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, batch, _ = query.shape
        src = key.shape[0]
        inner, h, d = self.inner_dim, self.num_heads, self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if packed:
            # self-attention, as torch's own packed path: one projection with the whole (constant) weight, the
            # output split; slicing the weight instead leaves three linears on computed weights, which
            # XNNPACK cannot pack ahead of time
            q, k, v = F.linear(query, w, b).split(inner, dim=-1)
        else:
            wq, wk, wv = w[:inner], w[inner:2 * inner], w[2 * inner:]
            bq, bk, bv = (None, None, None) if b is None else (b[:inner], b[inner:2 * inner], b[2 * inner:])
            q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        q = q.reshape(tgt, batch * h, d).transpose(0, 1).reshape(batch, h, tgt, d)
        k = k.reshape(src, batch * h, d).transpose(0, 1).reshape(batch, h, src, d)
        v = v.reshape(src, batch * h, d).transpose(0, 1).reshape(batch, h, src, d)
        mask = _float_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)  # (1, L, S) -> broadcast over heads
        if key_padding_mask is not None:
            pad = _float_mask(key_padding_mask, q.dtype).reshape(batch, 1, 1, src)
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=is_causal and mask is None)
        out = out.permute(2, 0, 1, 3).reshape(tgt, batch, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)  # as nn.MultiheadAttention calls it
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


ATTENTION_TYPES = (nn.MultiheadAttention, PrunedMultiheadAttention)
_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def in_proj_parts(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(parameter name, weight) of ``module``'s q/k/v projection: the packed one, or the three separate ones
    (``nn.MultiheadAttention`` with kdim/vdim); their columns are the query's channels."""
    if getattr(module, "in_proj_weight", None) is not None:
        return [("in_proj_weight", module.in_proj_weight)]
    return [(f"{part}_proj_weight", getattr(module, f"{part}_proj_weight")) for part in ("q", "k", "v")]


def embedding_slices(module: nn.Module, kind: str) -> list[tuple[str, int]]:
    """(parameter name relative to ``module``, axis) of every parameter slice one embedding channel owns:
    ``kind`` "in": a column of the q/k/v projection; "out": a row of ``out_proj`` and its bias entry."""
    if kind == "in":
        return [(name, 1) for name, _ in in_proj_parts(module)]
    slices = [("out_proj.weight", 0)]
    if module.out_proj.bias is not None:
        slices.append(("out_proj.bias", 0))
    return slices


def packed_in_proj(mha: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``mha``'s q/k/v projection as one packed (3 x inner, width) weight."""
    if getattr(mha, "in_proj_weight", None) is not None:
        return mha.in_proj_weight, mha.in_proj_bias
    return torch.cat([mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight]), mha.in_proj_bias


def as_pruned(mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
    """The same attention (every head) as a :class:`PrunedMultiheadAttention`, whose widths can change."""
    if mha.bias_k is not None or mha.add_zero_attn:
        raise PlanError("nn.MultiheadAttention with add_bias_kv / add_zero_attn cannot be narrowed",
                        hint="keep the width of the channels through it")
    if len({w.shape[1] for _, w in in_proj_parts(mha)}) != 1:
        raise PlanError("an nn.MultiheadAttention whose key/value widths differ from its query's is not "
                        "self-attention and cannot be narrowed", hint="keep the width of the channels through it")
    weight, bias = packed_in_proj(mha)
    out_bias = None if mha.out_proj.bias is None else mha.out_proj.bias.detach().clone()
    return PrunedMultiheadAttention(weight.detach().clone(), None if bias is None else bias.detach().clone(),
                                    mha.out_proj.weight.detach().clone(), out_bias,
                                    heads=mha.num_heads, batch_first=mha.batch_first, dropout=mha.dropout,
                                    kdim=mha.kdim, vdim=mha.vdim).train(mha.training)


def install_stand_ins(model: nn.Module, names: set[str] | None = None) -> None:
    """Replace the ``nn.MultiheadAttention`` modules of ``model`` (those named in ``names``, default all) by
    their :func:`as_pruned` stand-ins, in place; one that cannot narrow raises :class:`PlanError`."""
    for name, module in list(model.named_modules()):
        if name and isinstance(module, nn.MultiheadAttention) and (names is None or name in names):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, as_pruned(module))


class _Join(torch.autograd.Function):
    """``result`` as one autograd node whose inputs are ``inputs`` (what torch-pruning's trace walks)."""

    @staticmethod
    def forward(ctx, result: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.count = len(inputs)
        return result.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None,) * (1 + ctx.count)


class AttentionCalls:
    """What :func:`opaque_self_attention` saw: modules called as self-attention, modules called otherwise
    (cross-attention, or self-attention whose attention weights the model reads: the stand-in does not
    return them)."""

    def __init__(self) -> None:
        self.selfs: set[nn.Module] = set()
        self.others: set[nn.Module] = set()
        self._weights: dict[object, nn.Module] = {}  # grad_fn of returned attention weights -> module

    def read_by(self, output) -> None:
        """Move the modules whose attention weights reach ``output`` (the model's result) to :attr:`others`."""
        stack = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
        seen: set[object] = set()
        while stack:
            fn = stack.pop()
            if fn in seen:
                continue
            seen.add(fn)
            if fn in self._weights:
                self.others.add(self._weights[fn])
            stack.extend(f for f, _ in getattr(fn, "next_functions", ()) if f is not None)
        self.selfs -= self.others


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


@contextlib.contextmanager
def opaque_self_attention(model: nn.Module):
    """While active, each self-attention call of an attention module of ``model`` is one autograd node fed
    by its query alone. Yields an :class:`AttentionCalls`; call its ``read_by`` with the model's output."""
    calls = AttentionCalls()
    saved: list[tuple[nn.Module, object]] = []

    def opaque(module: nn.Module, original):
        def forward(*args, **kwargs):
            try:
                bound = _SIGNATURE.bind(module, *args, **kwargs)
            except TypeError:
                calls.others.add(module)
                return original(*args, **kwargs)
            query, key, value = (bound.arguments.get(k) for k in ("query", "key", "value"))
            if not (isinstance(query, torch.Tensor) and query is key and key is value):
                calls.others.add(module)
                return original(*args, **kwargs)
            calls.selfs.add(module)
            with torch.no_grad():
                out, weights = original(*args, **kwargs)
            if weights is not None:  # marked, to find out whether the model reads them
                weights = _Join.apply(weights, query)
                calls._weights[weights.grad_fn] = module
            return _Join.apply(out, query), weights
        return forward

    for module in model.modules():
        if isinstance(module, ATTENTION_TYPES):
            saved.append((module, module.__dict__.get("forward")))
            module.forward = opaque(module, module.forward)
    try:
        yield calls
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def embedding_pruner():
    """torch-pruning's pruner for attention modules (built on first use: torch-pruning is imported lazily).
    Input and output channels are separate (no intra-layer coupling); only a :class:`PrunedMultiheadAttention`
    can be narrowed, so realization converts (:func:`as_pruned`) before it prunes."""
    global _PRUNER
    if _PRUNER is None:
        from torch_pruning.pruner.function import BasePruningFunc

        class EmbeddingPruner(BasePruningFunc):
            def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
                keep = _kept(layer, self.get_out_channels(layer), idxs)
                layer.out_proj.weight = nn.Parameter(layer.out_proj.weight.detach()[keep].clone())
                if layer.out_proj.bias is not None:
                    layer.out_proj.bias = nn.Parameter(layer.out_proj.bias.detach()[keep].clone())
                layer.out_proj.out_features = layer.embed_dim = len(keep)
                return layer

            def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
                keep = _kept(layer, self.get_in_channels(layer), idxs)
                layer.in_proj_weight = nn.Parameter(layer.in_proj_weight.detach()[:, keep].clone())
                layer.kdim = layer.vdim = len(keep)
                return layer

            def get_out_channels(self, layer: nn.Module) -> int:
                return layer.out_proj.out_features

            def get_in_channels(self, layer: nn.Module) -> int:
                return in_proj_parts(layer)[0][1].shape[1]

        _PRUNER = EmbeddingPruner()
    return _PRUNER


_PRUNER = None


def _kept(layer: nn.Module, n: int, idxs) -> torch.Tensor:
    if not isinstance(layer, PrunedMultiheadAttention):
        raise PlanError("an nn.MultiheadAttention must be replaced by its PrunedMultiheadAttention before its "
                        "embedding is narrowed", hint="realize plans with patterns.realize")
    drop = {int(i) for i in idxs}
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)
