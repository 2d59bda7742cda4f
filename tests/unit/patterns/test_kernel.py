import itertools

import pytest
import torch
from torch import nn

from patterns.kernel import assign_shapes
from patterns.pattern_conv import FilterShape, PatternConv, symmetric_padding


@pytest.mark.parametrize("extra", [1.0, 1.5])  # 1.0: only exact symmetric padding, else crop/pad copies
@pytest.mark.parametrize("stride, padding, size", [(1, 1, 8), (2, 1, 8), (2, 1, 7), (1, 0, 6), (2, 2, 9)])
def test_every_window_matches_the_masked_conv(stride, padding, size, extra, monkeypatch):
    monkeypatch.setattr("patterns.pattern_conv.MAX_EXTRA_OUTPUT", extra)
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


@pytest.mark.parametrize("total", [1, 5, 16, 20, 32, 64])
@pytest.mark.parametrize("share", [0.0, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 0.8, 1.0])
def test_aligned_count_rounds_to_whole_tiles(total, share):
    from patterns.family import count_for_ratio
    from patterns.kernel import aligned_count

    assert aligned_count(share, total, 1) == count_for_ratio(total, share)  # tile 1: the exact share
    got = aligned_count(share, total, 8)
    assert got == total or got % 8 == 0
    assert 0 <= got <= total
    assert abs(got - share * total) <= 4 or got == total  # nearest multiple (or everything)


@pytest.mark.parametrize("out_ch, tile, expected", [
    # filters per shape (drop, col1, row1, col2, row2, full) of the paper's mix at ratio 1
    (16, 8, [0, 8, 0, 0, 8, 0]),
    (32, 16, [0, 16, 0, 0, 16, 0]),
    (64, 16, [16, 0, 16, 16, 0, 16]),
    (64, 1, [11, 10, 11, 11, 10, 11]),
])
def test_tiled_mix_counts(out_ch, tile, expected):
    torch.manual_seed(0)
    weight = torch.randn(out_ch, 4, 3, 3)
    shapes = assign_shapes(weight, "paper6", 1.0, tile=tile)
    keys = [(0, 0) if s.dropped else (s.kh, s.kw) for s in shapes]
    counts = [keys.count(k) for k in [(0, 0), (3, 1), (1, 3), (3, 2), (2, 3), (3, 3)]]
    assert counts == expected
    # Heavier shapes still go to the smaller-norm filters.
    norms = weight.pow(2).sum(dim=(1, 2, 3))
    sizes = torch.tensor([s.kh * s.kw for s in shapes], dtype=torch.float64)
    by_norm = sizes[torch.argsort(norms)]
    assert torch.all(by_norm[1:] >= by_norm[:-1])


def test_block_assignment_covers_whole_blocks_ranked_by_norm():
    scale = torch.tensor([3.0, 1.0, 4.0, 2.0]).repeat_interleave(8)  # block b has norm ~ scale[b]
    weight = torch.randn(32, 4, 3, 3, generator=torch.Generator().manual_seed(1)).abs() * scale.reshape(-1, 1, 1, 1)
    shapes = assign_shapes(weight, "paper6", 1.0, tile=8, blocks=True)
    for block in range(4):
        assert len(set(shapes[block * 8:(block + 1) * 8])) == 1  # one window per block
    size = [0 if shapes[b * 8].dropped else shapes[b * 8].kh * shapes[b * 8].kw for b in range(4)]
    # 4 blocks over six shares: drop, row1, col2, full, heaviest to the block with the smallest norm
    assert size == [6, 0, 9, 3]


def test_layout_places_zero_blocks_in_line():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 7, 7)
    mask = torch.zeros_like(conv.weight)
    mask[0:2, :, 1, :] = 1  # filters 0-1 keep the middle row, 2-3 are dropped, 4-5 keep everything
    mask[4:6] = 1
    expected = nn.functional.conv2d(x, conv.weight * mask, None, 1, 1)
    row = nn.Conv2d(3, 2, (1, 3), bias=False)
    row.weight.data = conv.weight.data[0:2, :, 1:2, :].clone()
    full = nn.Conv2d(3, 2, 3, bias=False)
    full.weight.data = conv.weight.data[4:6].clone()
    realized = PatternConv((3, 3), (1, 1), (1, 1), [(1, 0), (0, 0)], [row, full], layout=(0, -2, 1))
    assert realized.zeros == 2
    torch.testing.assert_close(realized(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="each of the 2 sub-convs"):
        PatternConv((3, 3), (1, 1), (1, 1), [(1, 0), (0, 0)], [row, full], layout=(0, -2))


def test_symmetric_padding_reads_the_window_rows():
    # 3x3 conv, padding 1, 8 rows: a 2-row window at the top (first read row -1) -> pad 1, outputs 0..7 of 9
    assert symmetric_padding(8, -1, 8, 2, 1) == (1, 0, 9)
    assert symmetric_padding(8, 0, 8, 2, 1) == (1, 1, 9)  # rows 0..8 -> skip the first output
    assert symmetric_padding(8, 0, 8, 1, 1) == (0, 0, 8)  # the centre row of a 3x3: no padding, no slice
    assert symmetric_padding(8, -1, 8, 1, 1) == (1, 0, 10)  # the top row: 2 extra rows computed
    assert symmetric_padding(8, -1, 8, 3, 1) == (1, 0, 8)  # the full kernel: plain padding 1
    assert symmetric_padding(8, 1, 4, 1, 2) == (1, 1, 5)  # stride 2: pad so the first read aligns


def test_a_layer_whose_kept_filters_are_all_dropped_emits_zero_channels():
    # Happens when channel pruning elsewhere in a shared group removed every filter this layer kept.
    realized = PatternConv((3, 3), (2, 2), (1, 1), [], [], zeros=4)
    y = realized(torch.randn(2, 3, 9, 9))
    assert y.shape == (2, 4, 5, 5) and not y.any()


def test_computed_positions_include_the_sliced_border():
    full = nn.Conv2d(3, 2, 3, bias=False)
    top_rows = nn.Conv2d(3, 2, (2, 3), bias=False)
    top_row = nn.Conv2d(3, 2, (1, 3), bias=False)
    realized = PatternConv((3, 3), (1, 1), (1, 1), [(0, 0), (0, 0), (0, 0)], [full, top_rows, top_row])
    # 8x8 output; the 2-row window reads a zero-padded input (exact), the 1-row window at the top, which never
    # reads the last input row, computes 10 rows (then sliced)
    assert realized.computed_positions(8, 8) == [64, 64, 80]
    assert realized(torch.randn(1, 3, 8, 8)).shape == (1, 6, 8, 8)


def test_an_off_centre_window_that_skips_no_input_row_reads_a_zero_padded_input():
    """Off-centre windows that read every input row and column run as conv(pad(x)) with no slice: XNNPACK folds
    the zero pad into the conv's own per-side padding; the others keep the symmetric conv and slice."""
    def ops(r0, c0, kh, kw):
        sub = nn.Conv2d(3, 2, (kh, kw))
        program = torch.export.export(PatternConv((3, 3), (1, 1), (1, 1), [(r0, c0)], [sub]), (torch.randn(1, 3, 8, 8),))
        return {n.target.__name__.split(".")[0] for n in program.graph.nodes if n.op == "call_function"}

    assert ops(0, 0, 2, 3) == {"pad", "conv2d"}  # reads rows -1..7 of 8: the top one padded, nothing sliced
    assert ops(1, 1, 2, 2) == {"pad", "conv2d"}
    assert ops(0, 0, 3, 3) == {"conv2d"}  # centred: the conv's own symmetric padding
    assert ops(0, 0, 1, 3) == {"conv2d", "slice"}  # the top row alone never reads the last input row: sliced
