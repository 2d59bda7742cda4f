import itertools

import pytest
import torch
from torch import nn

from patterns.kernel import FilterShape, PatternConv, assign_shapes


@pytest.mark.parametrize("stride, padding, size", [(1, 1, 8), (2, 1, 8), (2, 1, 7), (1, 0, 6), (2, 2, 9)])
def test_every_window_matches_the_masked_conv(stride, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 1, 3, stride=stride, padding=padding, bias=True)
    x = torch.randn(2, 3, size, size)
    for kh, kw in [(1, 3), (2, 3), (3, 1), (3, 2), (3, 3), (1, 1), (2, 2)]:
        for r0, c0 in itertools.product(range(4 - kh), range(4 - kw)):
            mask = torch.zeros_like(conv.weight)
            mask[..., r0:r0 + kh, c0:c0 + kw] = 1
            expected = nn.functional.conv2d(x, conv.weight * mask, conv.bias, stride, padding)
            sub = nn.Conv2d(3, 1, (kh, kw), stride, bias=True)
            sub.weight.data = conv.weight.data[..., r0:r0 + kh, c0:c0 + kw].clone()
            sub.bias.data = conv.bias.data.clone()
            realized = PatternConv((3, 3), (stride, stride), (padding, padding), [(r0, c0)], [sub])
            got = realized(x)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_smallest_filters_get_the_heaviest_shapes():
    weight = torch.stack([torch.full((2, 3, 3), float(i + 1)) for i in range(6)])  # filter i has norm ~ i
    shapes = assign_shapes(weight, "paper6", 1.0)
    sizes = [0 if s.dropped else s.kh * s.kw for s in shapes]
    assert sizes == [0, 3, 3, 6, 6, 9]
    assert shapes[1].kw == 1 and shapes[2].kh == 1  # col1 is heavier-ordered before row1
    half = assign_shapes(weight, "row1", 0.5)
    assert [s.kh for s in half] == [1, 1, 1, 3, 3, 3]
    assert half[0] == FilterShape(1, 0, 1, 3)  # equal energy everywhere -> the centred row
