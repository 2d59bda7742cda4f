"""Fold inference BatchNorm into the convolution that feeds it, on the exported graph, before lowering; and two
smaller rewrites of that graph for ExecuTorch's XNNPACK partitioner (:func:`prepare_for_lowering` runs them all):
pool defaults spelled out (:func:`spell_pool_defaults`), one-tensor concatenations dropped (:func:`drop_single_cats`)
and activations moved onto convs (below).

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
BatchNorm runs torchao's conv-BN fold, which traces ~100 pattern graphs (about 30 s per export). The
concatenation may also hold zero pieces (the dropped filters of a layer whose channels are shared with a
residual add, which cannot be removed): the BN maps zeros to a per-channel constant, so each zero piece
becomes that constant tensor.

:func:`push_activations_graph` then moves an elementwise activation (ReLU, ReLU6/hardtanh) that follows such a
concatenation or slice back onto each conv that feeds it: ``relu(cat(slice(conv_a), conv_b))`` becomes
``cat(slice(relu(conv_a)), relu(conv_b))``. XNNPACK fuses an activation into the conv right before it (as an
output clamp), so the activation stops being an operator of its own. fp32 only: before int8 quantization the
move broke lowering (a VGG-19 plan: XNNPACK refused the quantized max-pool after the concatenation, "Failed to
create maxpool2d node") and took a ResNet-110 plan past the int8 tolerance, so :mod:`host.export.pte` does not
apply it when quantizing. Measured (ResNet-20 ``paper6_tiled`` at width 1, ~2x MAC cut, this host, 1 thread):
the fold of the zero pieces takes int8 from 1.31x to 1.35x of dense int8; both passes take fp32 from 1.78x to
1.81x of dense fp32.

:func:`symmetric_padded_convs` gives the int8 exporters an off-centre kernel window's ``conv(pad(x))`` as a conv
with symmetric padding and a slice.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from functools import reduce

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from patterns.pattern_conv import symmetric_padding

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


def prepare_for_lowering(program: torch.export.ExportedProgram, example_inputs: Sequence[torch.Tensor],
                         activations: bool = True) -> tuple[torch.export.ExportedProgram, int, int]:
    """(program, BNs folded, activations moved): :func:`spell_pool_defaults`, :func:`fold_batchnorm_graph` then,
    with ``activations``, :func:`push_activations_graph` (see the module docstring). The program is re-exported only when something
    changed; it computes the same function."""
    module = program.module()
    pools = spell_pool_defaults(module) + drop_single_cats(module)
    folded = fold_batchnorm_graph(module)
    moved = push_activations_graph(module) if activations else 0
    if not folded and not moved and not pools:
        return program, 0, 0
    log.debug("folded %d BatchNorm(s) and moved %d activation(s) onto their convolutions before lowering",
              folded, moved)
    return torch.export.export(module, tuple(example_inputs)), folded, moved


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
            if conv.target in _ZEROS:  # a zero piece: the BN's output for zeros, a per-channel constant
                part = slice(start, stop)
                scale = torch.rsqrt(var[part] + eps) * (1.0 if bn_w is None else bn_w[part])
                value = (0.0 if bn_b is None else bn_b[part]) - mean[part] * scale
                shape = conv.meta["val"].shape
                constant = value.reshape(1, -1, *([1] * (len(shape) - 2))).expand(shape).contiguous()
                name = _free_name(gm, "bn_folded_constant")
                gm.register_buffer(name, constant.detach().clone())
                with graph.inserting_before(conv):
                    constant_node = graph.get_attr(name)
                conv.replace_all_uses_with(constant_node)
                graph.erase_node(conv)
                continue
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
        if _is_zero_piece(conv) and conv is not source:
            convs.append((conv, start, start + int(conv.meta["val"].shape[1])))
            start += int(conv.meta["val"].shape[1])
            continue
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
_POOLS = {_aten.max_pool2d.default, _aten.avg_pool2d.default}


def drop_single_cats(gm: fx.GraphModule) -> int:
    """Route the users of every ``cat([x])`` (a copy of ``x``) to ``x``, in place; returns how many.

    torchvision's DenseNet concatenates a list of one tensor in the first layer of every dense block, and
    ExecuTorch's XNNPACK partitioner takes only concatenations of two or more: each one ran as a portable copy
    between two delegates. An inference graph is functional, so the users can read ``x``; a concatenation that
    feeds the graph's output stays (the output must not be an input's buffer)."""
    count = 0
    for node in list(gm.graph.nodes):
        if (node.op == "call_function" and node.target == _aten.cat.default and isinstance(node.args[0], list | tuple)
                and len(node.args[0]) == 1 and all(u.op != "output" for u in node.users)):
            node.replace_all_uses_with(node.args[0][0])
            gm.graph.erase_node(node)
            count += 1
    return _relinted(gm, count)


def spell_pool_defaults(gm: fx.GraphModule) -> int:
    """Spell out what a 2-d max/avg pool's defaults mean where ExecuTorch's XNNPACK partitioner reads them
    otherwise, in place; returns how many pools changed. Nothing else changes:

    - a pool traced without a stride gets its kernel size (PyTorch's default). ``F.max_pool2d(x, 2)``, the PyTorch
      MNIST example's pooling, leaves the stride out, and the partitioner reads ``node.args[2]``: the whole
      export failed with "IndexError: tuple index out of range";
    - an average pool without padding (and without ceil mode) counts no padding either way, so its
      ``count_include_pad`` (PyTorch's default True) becomes False: the partitioner refuses every pool with True,
      and ``nn.AvgPool2d(2)`` ran outside the XNNPACK delegate, splitting it."""
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _POOLS or len(node.args) < 2 or node.kwargs:
            continue
        args = list(node.args)
        if len(args) < 3 or not args[2]:
            kernel = [args[1], args[1]] if isinstance(args[1], int) else list(args[1])
            args[2:3] = [kernel * 2 if len(kernel) == 1 else kernel]
        if node.target == _aten.avg_pool2d.default:
            padding, ceil = (args + [None, None])[3:5]
            pads = [padding] if isinstance(padding, int) else list(padding or [])
            include = args[5] if len(args) > 5 else True
            if include and not any(pads) and not ceil and len(args) <= 6:
                args = args[:3] + [padding or [0, 0], bool(ceil), False]
        if tuple(args) != node.args:
            node.args = tuple(args)
            count += 1
    return _relinted(gm, count)


# what a zero piece of a concatenation is traced as (PatternConv's ``x.new_zeros``)
_ZEROS = {_aten.new_zeros.default, _aten.zeros.default}
# elementwise activations with f(0) == 0 that XNNPACK fuses into the conv before them: (op, its extra args are
# the clamp bounds)
_ACTIVATIONS = {_aten.relu.default, _aten.hardtanh.default, _aten.relu6.default}


def _is_zero_piece(node) -> bool:
    """A single-use constant zero tensor of known shape (at least channels)."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target in _ZEROS
            and len(node.users) == 1 and isinstance(value, torch.Tensor) and value.dim() >= 2)


@torch.no_grad()
def push_activations_graph(gm: fx.GraphModule) -> int:
    """Move, in place, each activation whose input is (single-use spatial slices of) a conv, or a channel
    concatenation of such pieces and zero/constant pieces, onto the conv(s): see the module docstring. A piece
    used by anything else blocks the move (that use would see activated values). Returns how many activations
    were moved."""
    graph = gm.graph
    moved = 0
    for act in list(graph.nodes):
        if act.op != "call_function" or act.target not in _ACTIVATIONS or not isinstance(act.args[0], fx.Node):
            continue
        source = act.args[0]
        if len(source.users) != 1:
            continue
        head = _behind_spatial_slices(source)
        if head is source and not _is_channel_cat(head):
            continue  # right after a conv already (or after something else): nothing to move
        pieces = [_behind_spatial_slices(x) for x in head.args[0]] if _is_channel_cat(head) else [head]
        if _is_channel_cat(head) and not all(isinstance(x, fx.Node) and len(x.users) == 1 for x in head.args[0]):
            continue
        convs, constants = [], []
        for piece in pieces:
            if (isinstance(piece, fx.Node) and piece.op == "call_function" and piece.target in _CONVS
                    and len(piece.users) == 1 and _fusable_after(piece)):
                convs.append(piece)
            elif isinstance(piece, fx.Node) and (_is_zero_piece(piece) or (piece.op == "get_attr"
                                                                           and len(piece.users) == 1)):
                constants.append(piece)
            else:
                break
        else:
            if not convs or not _constants_activate(gm, act, constants):
                continue
            for conv in convs:
                with graph.inserting_after(conv):
                    fused = graph.call_function(act.target, (conv, *act.args[1:]), dict(act.kwargs))
                fused.meta = dict(conv.meta)
                conv.replace_all_uses_with(fused, delete_user_cb=lambda user, fused=fused: user is not fused)
            act.replace_all_uses_with(source)
            graph.erase_node(act)
            moved += 1
    return _relinted(gm, moved)


def _relinted(gm: fx.GraphModule, changed: int) -> int:
    """``changed``, after checking and recompiling ``gm``'s graph when a pass changed it."""
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def _fusable_after(conv: fx.Node) -> bool:
    """The conv's only user is a spatial slice or a channel concatenation (or the activation itself)."""
    (user,) = conv.users
    return user.target in _SPATIAL_SLICES or user.target == _aten.cat.default or user.target in _ACTIVATIONS


def _constants_activate(gm: fx.GraphModule, act: fx.Node, constants: list[fx.Node]) -> bool:
    """Make each constant piece read ``act`` of its tensor (a new buffer: the old one may have other readers);
    False, changing nothing, when a zero piece would not stay zero (a clamp whose range excludes 0)."""
    op, extra = act.target, (act.args[1:], act.kwargs)
    if any(p.op != "get_attr" for p in constants) and float(op(torch.zeros(1), *extra[0], **extra[1])) != 0.0:
        return False
    for piece in constants:
        if piece.op == "get_attr":
            name = _free_name(gm, "activated_constant")
            gm.register_buffer(name, op(_value(gm, piece), *extra[0], **extra[1]).detach().clone())
            piece.target = name
    return True


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


def symmetric_padded_convs(graph_module: torch.fx.GraphModule, inputs: Sequence[torch.Tensor]) -> torch.fx.GraphModule:
    """``conv(pad(x))`` with an asymmetric zero pad (how :class:`patterns.pattern_conv.PatternConv` computes an
    off-centre window) rewritten as a conv with symmetric padding whose surplus border outputs are sliced off,
    the same function; the graph re-exported when anything changed, else returned as is. The int8 exporters
    quantize this form:

    - XNNPACK: the zero-padded form runs faster in fp32 (XNNPACK folds the pad into the conv's per-side
      padding), but in int8 it was faster on some plans and slower on others (ResNet-56, 1 thread, side by
      side: one window per layer 476 us padded against 507 us sliced; a mix of channel pruning and windows 530
      against 491 us, with the pad's quantize/dequantize pair dropped so that XNNPACK could fold it);
    - LiteRT: litert-torch's layout pass failed on a pad between quantized ops ("Attempting to convert non-NHWC
      compatible node to NHWC"), and a pad of the graph input converted to an int8 model that disagreed with
      its reference."""
    aten = torch.ops.aten
    graph, changed = graph_module.graph, False
    for pad in list(graph.nodes):
        if pad.op != "call_function" or pad.target not in (aten.pad.default, aten.constant_pad_nd.default):
            continue
        if len(pad.users) != 1 or not _zero_spatial_pad(pad):
            continue
        (conv,) = pad.users
        if (conv.target != aten.conv2d.default or conv.args[0] is not pad or "val" not in conv.meta
                or "val" not in getattr(conv.args[1], "meta", {})):
            continue
        source = pad.args[0].meta.get("val") if isinstance(pad.args[0], fx.Node) else None
        if source is None or 0 in tuple(source.shape):  # a window that reads only padding: zeros, padded
            continue
        left, right, top, bottom = (list(pad.args[1]) + [0, 0, 0, 0])[:4]
        stride, padding, dilation = (_pair(conv.args[i] if len(conv.args) > i else d)
                                     for i, d in ((3, 1), (4, 0), (5, 1)))
        if padding != (0, 0) or dilation != (1, 1):
            continue
        out_h, out_w = (int(n) for n in conv.meta["val"].shape[-2:])
        kernel = tuple(int(n) for n in conv.args[1].meta["val"].shape[-2:])
        # the symmetric padding (and first output) with which one conv computes the window's outputs
        rows = symmetric_padding(int(source.shape[-2]), -top, out_h, kernel[0], stride[0])
        cols = symmetric_padding(int(source.shape[-1]), -left, out_w, kernel[1], stride[1])
        if rows is None or cols is None:
            continue
        sym, first = (rows[0], cols[0]), (rows[1], cols[1])
        with graph.inserting_before(conv):
            args = list(conv.args) + [None] * (7 - len(conv.args))
            y = graph.call_function(aten.conv2d.default, (pad.args[0], args[1], args[2], list(stride), list(sym),
                                                          [1, 1], args[6] if args[6] is not None else 1))
            for dim, (start, size) in ((2, (first[0], out_h)), (3, (first[1], out_w))):
                y = graph.call_function(aten.slice.Tensor, (y, dim, start, start + size))
        conv.replace_all_uses_with(y)
        graph.erase_node(conv)
        graph.erase_node(pad)
        changed = True
    if not changed:
        return graph_module
    graph.lint()
    graph_module.recompile()
    return torch.export.export(graph_module, tuple(inputs)).module()


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _zero_spatial_pad(node: torch.fx.Node) -> bool:
    """``node`` pads the last two dimensions of a 4-d tensor with zeros, on no side negatively (a crop)."""
    aten = torch.ops.aten
    if node.target == aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        if mode != "constant" or value not in (None, 0, 0.0):
            return False
    elif node.target == aten.constant_pad_nd.default:
        value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
        if value not in (0, 0.0):
            return False
    else:
        return False
    amounts = list(node.args[1])
    value_meta = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    return (len(amounts) <= 4 and all(a >= 0 for a in amounts)
            and getattr(value_meta, "ndim", 4) == 4)
