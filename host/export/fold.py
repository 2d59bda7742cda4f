"""Fold inference BatchNorm into the convolution that feeds it, on the exported graph, before lowering.

ExecuTorch's XNNPACK ``FuseBatchNormPass`` does this fold itself, but it names the folded weight after the
conv's parameter path, and a path that is not a Python identifier (torchvision's RegNet registers blocks as
``block1-0``) becomes a different FX placeholder name, so the pass fails with "'..._weight_fused_bn' is not
in list". Folding first, into parameters with plain names, leaves that pass nothing to do, for any model.

The fold works on the ATen graph of the ``torch.export`` program, so it finds conv -> BN pairs by dataflow
(not by module names or types) and applies to every model torch.export can trace. A BN is folded only when
the conv's output has no other consumer: otherwise that consumer would see the normalised values.
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
        pair = _foldable(gm, bn)
        if pair is None:
            continue
        conv, outputs = pair
        transposed = conv.target == _aten.convolution.default and bool(conv.args[6])
        weight = _value(gm, conv.args[1])
        bias = _value(gm, conv.args[2]) if len(conv.args) > 2 else None
        mean, var = _value(gm, bn.args[3]), _value(gm, bn.args[4])
        bn_w = _value(gm, bn.args[1]) if bn.args[1] is not None else None
        bn_b = _value(gm, bn.args[2]) if bn.args[2] is not None else None
        eps = bn.args[7] if bn.target == _BN else bn.args[6]
        fused_w, fused_b = fuse_conv_bn_weights(weight, bias, mean, var, eps, bn_w, bn_b, transpose=transposed)
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
        for out in outputs:
            out.replace_all_uses_with(conv)
            if out is not bn:
                graph.erase_node(out)
        graph.erase_node(bn)
        count += 1
    if count:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return count


def _foldable(gm: fx.GraphModule, bn: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(conv node, the nodes standing for the BN's output) when ``bn`` can be folded into its input conv."""
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
    conv = bn.args[0]
    if not isinstance(conv, fx.Node) or conv.op != "call_function" or conv.target not in _CONVS:
        return None
    if len(conv.users) != 1:
        return None
    params = [conv.args[1], *(conv.args[2:3]), *bn.args[1:5]]
    if not all(p is None or (isinstance(p, fx.Node) and p.op == "get_attr") for p in params):
        return None  # a weight computed at run time cannot be folded ahead of time
    if not (isinstance(bn.args[3], fx.Node) and isinstance(bn.args[4], fx.Node)):
        return None
    return conv, outputs


def _value(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    if node is None:
        return None
    return reduce(getattr, node.target.split("."), gm)


def _free_name(gm: fx.GraphModule, base: str) -> str:
    index = 0
    while hasattr(gm, f"{base}_{index}"):
        index += 1
    return f"{base}_{index}"
