"""Fold inference BatchNorm into the convolution that feeds it, on the exported graph, before lowering.

ExecuTorch's XNNPACK ``FuseBatchNormPass`` does this fold itself, but it names the folded weight after the
conv's parameter path, and a path that is not a Python identifier (torchvision's RegNet registers blocks as
``block1-0``) becomes a different FX placeholder name, so the pass fails with "'..._weight_fused_bn' is not
in list". Folding first, into parameters with plain names, leaves that pass nothing to do, for any model.

The fold works on the ATen graph of the ``torch.export`` program, so it finds conv -> BN pairs by dataflow
(not by module names or types) and applies to every model torch.export can trace. A BN is folded only when
the conv's output has no other consumer: otherwise that consumer would see the normalised values.

Between the conv and its BN there may be spatial slices (a per-channel affine map commutes with cropping
height or width) and a channel concatenation of several such convs, each then taking its own channels of
the BN: the form a realized kernel-pattern layer has (sub-convs whose surplus border outputs are sliced off,
concatenated). Left unfolded, those BNs ran as separate ops, and int8 quantization of a graph that still has
BatchNorm runs torchao's conv-BN fold, which traces ~100 pattern graphs (about 30 s per export).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from functools import reduce

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)

_aten = torch.ops.aten
# conv ops whose (input, weight, bias) are args 0-2; aten.convolution also says whether it is transposed
_CONVS = {_aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default, _aten.convolution.default}
_BN = _aten.batch_norm.default  # (input, weight, bias, mean, var, training, momentum, eps, cudnn)
_BN_NO_TRAINING = _aten._native_batch_norm_legit_no_training.default  # (input, w, b, mean, var, momentum, eps)


def fold_batchnorm(program: torch.export.ExportedProgram,
                   example_inputs: Sequence[torch.Tensor]) -> tuple[torch.export.ExportedProgram, int]:
    """(program with every foldable conv -> inference BN pair folded, number of BNs folded).

    The program is re-exported only when something was folded; it computes the same function.
    """
    module = program.module()
    folded = fold_batchnorm_graph(module)
    if not folded:
        return program, 0
    log.debug("folded %d BatchNorm(s) into their convolutions before lowering", folded)
    return torch.export.export(module, tuple(example_inputs)), folded


@torch.no_grad()
def fold_batchnorm_graph(gm: fx.GraphModule) -> int:
    """Fold, in place, each inference BatchNorm whose input is a convolution used only by that BN."""
    graph = gm.graph
    count = 0
    for bn in list(graph.nodes):
        found = _foldable(gm, bn)
        if found is None:
            continue
        convs, outputs = found
        mean, var = _value(gm, bn.args[3]), _value(gm, bn.args[4])
        bn_w = _value(gm, bn.args[1]) if bn.args[1] is not None else None
        bn_b = _value(gm, bn.args[2]) if bn.args[2] is not None else None
        eps = bn.args[7] if bn.target == _BN else bn.args[6]
        for conv, start, stop in convs:
            transposed = conv.target == _aten.convolution.default and bool(conv.args[6])
            weight = _value(gm, conv.args[1])
            bias = _value(gm, conv.args[2]) if len(conv.args) > 2 else None
            part = slice(start, stop)
            fused_w, fused_b = fuse_conv_bn_weights(
                weight, bias, mean[part], var[part], eps, None if bn_w is None else bn_w[part],
                None if bn_b is None else bn_b[part], transpose=transposed)
            w_name, b_name = _free_name(gm, "bn_folded_weight"), _free_name(gm, "bn_folded_bias")
            gm.register_parameter(w_name, nn.Parameter(fused_w.detach().clone(), requires_grad=False))
            gm.register_parameter(b_name, nn.Parameter(fused_b.detach().clone(), requires_grad=False))
            with graph.inserting_before(conv):
                w_node, b_node = graph.get_attr(w_name), graph.get_attr(b_name)
            args = list(conv.args)
            args[1] = w_node
            if len(args) > 2:
                args[2] = b_node
            else:
                args.append(b_node)
            conv.args = tuple(args)
        source = bn.args[0]
        for out in outputs:
            out.replace_all_uses_with(source)
            if out is not bn:
                graph.erase_node(out)
        graph.erase_node(bn)
        count += 1
    if count:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return count


def _foldable(gm: fx.GraphModule, bn: fx.Node) -> tuple[list[tuple[fx.Node, int, int]], list[fx.Node]] | None:
    """([(conv node, first BN channel, end BN channel)], the nodes standing for the BN's output) when ``bn``
    can be folded into the conv(s) feeding it (see the module docstring)."""
    if bn.op != "call_function":
        return None
    if bn.target == _BN:
        if bn.args[5]:  # training-mode BN normalises by batch statistics: nothing to fold
            return None
        outputs = [bn]
    elif bn.target == _BN_NO_TRAINING:
        outputs = list(bn.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in outputs):
            return None  # the batch statistics are used: leave it
    else:
        return None
    if not all(p is None or (isinstance(p, fx.Node) and p.op == "get_attr") for p in bn.args[1:5]):
        return None
    if not (isinstance(bn.args[3], fx.Node) and isinstance(bn.args[4], fx.Node)):
        return None
    source = _behind_spatial_slices(bn.args[0])
    if _is_channel_cat(source):
        parts = [_behind_spatial_slices(x) for x in source.args[0]]
    else:
        parts = [source]
    convs, start = [], 0
    for conv in parts:
        if not isinstance(conv, fx.Node) or conv.op != "call_function" or conv.target not in _CONVS:
            return None
        if len(conv.users) != 1:
            return None
        if not all(p is None or (isinstance(p, fx.Node) and p.op == "get_attr") for p in [conv.args[1], *conv.args[2:3]]):
            return None  # a weight computed at run time cannot be folded ahead of time
        channels = _out_channels(conv)
        if channels is None:
            return None
        convs.append((conv, start, start + channels))
        start += channels
    mean = _value(gm, bn.args[3])
    if start != mean.shape[0]:
        return None
    return convs, outputs


_SPATIAL_SLICES = {_aten.slice.Tensor, _aten.slice_copy.Tensor, _aten.narrow.default}


def _rank(node: fx.Node) -> int | None:
    value = node.meta.get("val")
    return value.dim() if isinstance(value, torch.Tensor) else None


def _dim(node: fx.Node, index: int = 1) -> int | None:
    """The (non-negative) dimension argument of a slice/narrow/cat node, None when it cannot be told."""
    dim = node.args[index] if len(node.args) > index else node.kwargs.get("dim", 0)
    if not isinstance(dim, int):
        return None
    if dim < 0:
        rank = _rank(node)
        return None if rank is None else dim + rank
    return dim


def _behind_spatial_slices(node):
    """The node a chain of single-use height/width slices starts from (``node`` itself when there is none)."""
    while (isinstance(node, fx.Node) and node.op == "call_function" and node.target in _SPATIAL_SLICES
           and len(node.users) == 1 and (_dim(node) or 0) >= 2):
        node = node.args[0]
    return node


def _is_channel_cat(node) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target == _aten.cat.default
            and len(node.users) == 1 and _dim(node) == 1)


def _out_channels(conv: fx.Node) -> int | None:
    """Output channels of a conv node, from the shape of its traced output; None when it is not known."""
    value = conv.meta.get("val")
    if isinstance(value, torch.Tensor) and value.dim() >= 2:
        return int(value.shape[1])
    return None


def _value(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    if node is None:
        return None
    return reduce(getattr, node.target.split("."), gm)


def _free_name(gm: fx.GraphModule, base: str) -> str:
    index = 0
    while hasattr(gm, f"{base}_{index}"):
        index += 1
    return f"{base}_{index}"
