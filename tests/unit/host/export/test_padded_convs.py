"""The int8 exporters get a kernel pattern's off-centre windows as convs with symmetric padding and a slice
(host.export.fold.symmetric_padded_convs), the same function as conv(pad(x))."""

import torch
from torch import nn

from host.export.fold import symmetric_padded_convs
from patterns.pattern_conv import PatternConv


def _ops(graph_module) -> list[str]:
    return [n.target.__name__.split(".")[0] for n in graph_module.graph.nodes if n.op == "call_function"]


def test_asymmetric_zero_pads_become_symmetric_padding_and_a_slice():
    torch.manual_seed(0)
    convs = [nn.Conv2d(4, 3, (2, 3)), nn.Conv2d(4, 3, (2, 2)), nn.Conv2d(4, 3, 3)]
    for stride in (1, 2, 3):
        layer = PatternConv((3, 3), (stride, stride), (1, 1), [(0, 0), (1, 1), (0, 0)], convs).eval()
        x = torch.randn(2, 4, 9, 9)
        graph = torch.export.export(layer, (x,)).module()
        assert _ops(graph).count("pad") == (2 if stride < 3 else 0)  # at stride 3 PatternConv slices itself
        rewritten = symmetric_padded_convs(graph, (x,))
        assert "pad" not in _ops(rewritten) and "slice" in _ops(rewritten)
        torch.testing.assert_close(rewritten(x), layer(x), atol=1e-5, rtol=0)


def test_timms_same_padding_conv_is_rewritten_too():
    """timm's Conv2dSame (TensorFlow "SAME": F.pad with more on the bottom/right, then the conv) at stride 2."""
    from host.models.external import import_library

    layers = import_library("timm").layers
    torch.manual_seed(0)
    conv = layers.Conv2dSame(4, 6, 3, stride=2).eval()
    x = torch.randn(1, 4, 8, 8)
    graph = torch.export.export(conv, (x,)).module()
    assert "pad" in _ops(graph)
    rewritten = symmetric_padded_convs(graph, (x,))
    assert "pad" not in _ops(rewritten)
    torch.testing.assert_close(rewritten(x), conv(x), atol=1e-5, rtol=0)


def test_a_pad_with_another_reader_or_a_value_stays():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            y = nn.functional.pad(x, (1, 0, 1, 0))
            return self.conv(y).sum() + self.conv(nn.functional.pad(x, (1, 1, 1, 1), value=1.0)).sum() + y.sum()

    x = torch.randn(1, 4, 8, 8)
    graph = torch.export.export(Shared().eval(), (x,)).module()
    assert symmetric_padded_convs(graph, (x,)) is graph and _ops(graph).count("pad") == 2


def test_a_window_that_reads_only_padding_keeps_its_pad():
    # VGG-19 at 8 px: on a 1x1 map the top row of a 3x3 kernel reads only padding; its input crop is empty
    layer = PatternConv((3, 3), (1, 1), (1, 1), [(0, 0)], [nn.Conv2d(4, 3, (1, 3))]).eval()
    x = torch.randn(1, 4, 1, 1)
    graph = torch.export.export(layer, (x,)).module()
    rewritten = symmetric_padded_convs(graph, (x,))
    torch.testing.assert_close(rewritten(x), layer(x))
