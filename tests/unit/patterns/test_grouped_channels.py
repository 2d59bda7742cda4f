"""Channel pruning through grouped convolutions (ResNeXt, RegNet): the same count leaves each of the conv's
groups, masks equal the realized model, the realized conv keeps its group count."""

import copy

import pytest
import torch
from torch import nn

from host.errors import PlanError
from patterns import LayerAssignment, Plan, apply_masks, count, realize
from patterns.grouped import balanced_drop, prune_grouped
from patterns.structure import coupled_groups
from tests.helpers import require_models_extra


@pytest.fixture(scope="module")
def resnext():
    """torchvision's own ResNeXt bottleneck network, cut to one block per stage (groups=4, 4 wide)."""
    require_models_extra()
    from host.models.external import import_library

    resnet = import_library("torchvision").models.resnet
    torch.manual_seed(0)
    model = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4, num_classes=10)
    with torch.no_grad():  # BN statistics that are not the identity
        model.train()
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


def _check(model, plan, x, changes: bool = True):
    masked = copy.deepcopy(model)
    masks = apply_masks(masked, plan, x[:1])
    small = realize(model, plan, x[:1])
    with torch.no_grad():
        want = masked(x)
        torch.testing.assert_close(small(x), want, atol=1e-5, rtol=0)
        assert not changes or (want - model(x)).abs().max() > 1e-4  # channels really went
    assert count(small, x[:1]).macs == count(model, x[:1], masks).macs
    assert count(small, x[:1]).dense_macs < count(model, x[:1]).dense_macs
    return small


def _block_sizes(channels: list[int], n: int, blocks: int) -> list[int]:
    per = n // blocks
    return [sum(1 for c in channels if c // per == b) for b in range(blocks)]


def test_grouped_conv_groups_are_cut_in_blocks(resnext):
    groups = {g.root: g for g in coupled_groups(resnext, torch.randn(1, 3, 32, 32))}
    into = groups["layer1.0.conv1"]  # 1x1 conv feeding the grouped 3x3 conv
    out = groups["layer1.0.conv2"]  # the grouped conv's own outputs
    assert not into.barrier and not out.barrier
    assert into.blocks == out.blocks == 4
    assert not into.private  # a per-filter order cannot be folded through a grouped conv


@pytest.mark.parametrize("pattern", ["prune25", "prune50", "prune75"])
def test_pruning_into_and_out_of_a_grouped_conv_is_exact(resnext, pattern):
    x = torch.randn(2, 3, 32, 32)
    plan = Plan.from_mapping({"layer2.0.conv1": LayerAssignment("channel", pattern),
                              "layer2.0.conv2": LayerAssignment("channel", pattern),
                              "layer3.0.conv1": LayerAssignment("channel", pattern)})
    small = _check(resnext, plan, x)
    conv = small.get_submodule("layer2.0.conv2")
    width = resnext.get_submodule("layer2.0.conv2").in_channels  # 32: 4 groups of 8
    kept = width - 4 * int(8 * {"prune25": 0.25, "prune50": 0.5, "prune75": 0.75}[pattern] + 0.5)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, kept, kept)
    assert tuple(conv.weight.shape[:2]) == (kept, kept // 4)


def test_each_block_loses_its_own_weakest_channels(resnext):
    """The positions differ from block to block: the weakest of each block go, not the same offsets."""
    model = copy.deepcopy(resnext)
    conv = model.get_submodule("layer1.0.conv1")  # 16 channels into 4 groups of 4
    bn = model.get_submodule("layer1.0.bn1")
    grouped = model.get_submodule("layer1.0.conv2")  # weight (16, 4, 3, 3): input c is column c % 4 of its group
    with torch.no_grad():
        for block, weak in enumerate((0, 1, 2, 3)):
            c = 4 * block + weak
            conv.weight[c] *= 1e-3
            bn.weight[c] *= 1e-3
            bn.bias[c] *= 1e-3
            grouped.weight[4 * block:4 * block + 4, weak] *= 1e-3
    x = torch.randn(2, 3, 32, 32)
    plan = Plan.from_mapping({"layer1.0.conv1": LayerAssignment("channel", "prune25")})
    masked = copy.deepcopy(model)
    masks = apply_masks(masked, plan, x[:1])
    gone = (~masks["layer1.0.conv1.weight"]).flatten(1).all(1).nonzero().flatten().tolist()
    assert gone == [0, 5, 10, 15]
    _check(model, plan, x, changes=False)  # the weak channels barely contribute


def test_balanced_drop_takes_the_same_count_from_each_run():
    norms = torch.tensor([5.0, 1, 3, 2, 0.5, 9, 8, 7])
    assert balanced_drop(norms, 2, 2) == [1, 4]
    assert balanced_drop(norms, 2, 4) == [1, 3, 4, 7]
    assert _block_sizes(balanced_drop(norms, 4, 8), 8, 4) == [1, 1, 1, 1]  # one channel of each run stays


def test_unbalanced_removal_is_refused():
    conv = nn.Conv2d(8, 8, 3, groups=2)
    with pytest.raises(PlanError, match="same count from each"):
        prune_grouped(conv, [0, 1], "in")


class _Mixed(nn.Module):
    """Two grouped convs read one tensor: groups 2 and 4 agree (blocks of 4), groups 2 and 3 cannot."""

    def __init__(self, other_groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 1)
        self.a = nn.Conv2d(12, 12, 3, padding=1, groups=2)
        self.b = nn.Conv2d(12, 12, 3, padding=1, groups=other_groups)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.cat([self.a(y), self.b(y)], 1))


def test_grouped_convs_sharing_channels_need_compatible_group_counts():
    x = torch.randn(2, 3, 8, 8)
    ok = {g.root: g for g in coupled_groups(_Mixed(6), x[:1])}["stem"]
    assert not ok.barrier and ok.blocks == 6
    _check(_Mixed(6), Plan.from_mapping({"stem": LayerAssignment("channel", "prune50")}), x)
    bad = {g.root: g for g in coupled_groups(_Mixed(3), x[:1])}["stem"]
    assert "do not divide one another" in bad.barrier


class _Multiplier(nn.Module):
    """A depthwise conv with a channel multiplier: each input channel is one whole group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.dw(self.stem(x)))


def test_a_removal_that_would_empty_a_group_is_a_barrier():
    x = torch.randn(1, 3, 8, 8)
    groups = {g.root: g for g in coupled_groups(_Multiplier(), x)}
    assert "blocks have one channel each" in groups["stem"].barrier
    assert not groups["dw"].barrier and groups["dw"].blocks == 4  # its outputs: 2 per group, 1 may go
    _check(_Multiplier(), Plan.from_mapping({"dw": LayerAssignment("channel", "prune50")}), torch.randn(2, 3, 8, 8))
