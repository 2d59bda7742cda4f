"""Export-time BatchNorm folding into the sub-convs of a realized :class:`~patterns.pattern_conv.PatternConv`.

Engines fold an eval-mode BN into the conv right before it, but a PatternConv ends in a concat (and maybe a
gather), so the BN would run as separate multiply/add passes. Folding it here restores parity with the
dense model. It changes the parameter count (BN scale/shift become conv biases), so it is a separate step
applied just before export, not part of :func:`patterns.realize` (whose output mirrors the masked model).
"""

from __future__ import annotations

import torch
from torch import nn

from patterns.family import set_submodule
from patterns.pattern_conv import PatternConv


@torch.no_grad()
def fuse_batchnorm(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly consumes a PatternConv's output into it (in place)."""
    names = {module: name for name, module in model.named_modules()}
    outputs: dict[int, tuple[PatternConv, torch.Tensor]] = {}  # the tensor is kept so ids are never reused
    pairs: list[tuple[PatternConv, str, nn.BatchNorm2d]] = []

    def conv_hook(module, _inputs, output):
        outputs[id(output)] = (module, output)

    def bn_hook(module, inputs, _output):
        producer, tensor = outputs.get(id(inputs[0]), (None, None))
        if producer is not None and tensor is inputs[0] and not module.training and producer.zeros == 0:
            pairs.append((producer, names[module], module))

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, PatternConv)]
    handles += [m.register_forward_hook(bn_hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for conv, bn_name, bn in pairs:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        if conv.index is not None:  # output channel j reads concat channel index[j]
            order = torch.empty_like(conv.index)
            order[conv.index] = torch.arange(len(conv.index))
            scale, shift = scale[order], shift[order]
        start = 0
        for sub in conv.convs:
            n = sub.out_channels
            s, t = scale[start:start + n], shift[start:start + n]
            sub.weight.mul_(s.reshape(-1, 1, 1, 1))
            bias = sub.bias if sub.bias is not None else torch.zeros(n)
            sub.bias = nn.Parameter(bias * s + t)
            start += n
        set_submodule(model, bn_name, nn.Identity())
    return model
