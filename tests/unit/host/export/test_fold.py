"""BatchNorm folding before XNNPACK lowering (host.export.fold), and the RegNet export it unblocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from host.export.fold import (
    fold_batchnorm,
    fold_batchnorm_graph,
    prepare_for_lowering,
    push_activations_graph,
)
from tests.helpers import require_models_extra


class _HyphenBlocks(nn.Module):
    """What trips ExecuTorch's FuseBatchNormPass in torchvision's RegNet: conv -> BN inside a module
    registered under a name that is not a Python identifier (RegNet's ``block1-0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("block1-0", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                                  nn.ReLU()))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(getattr(self, "block1-0")(x).mean((2, 3)))


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows in the outputs."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def _bn_ops(program) -> int:
    return sum(1 for n in program.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target))


def test_fold_removes_every_foldable_bn_and_keeps_the_function():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 3, padding=1)                 # with bias
            self.bn_a = nn.BatchNorm2d(6)
            self.b = nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False)
            self.bn_b = nn.BatchNorm2d(6, affine=False)
            self.c = nn.Conv2d(6, 6, 1)                             # its output also feeds the residual add
            self.bn_c = nn.BatchNorm2d(6)

        def forward(self, x):
            y = self.bn_b(self.b(torch.relu(self.bn_a(self.a(x)))))
            z = self.c(y)
            return self.bn_c(z) + z  # folding bn_c into c would change the second use of z

    torch.manual_seed(0)
    model = _randomize_bn(Mixed())
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(model, (x,))
    folded, count = fold_batchnorm(program, (x,))
    assert count == 2 and _bn_ops(folded) == 1
    with torch.no_grad():
        torch.testing.assert_close(folded.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_reaches_through_spatial_slices_and_channel_concats():
    """A realized kernel-pattern layer: sub-convs whose surplus border rows/columns are sliced off, concatenated
    along channels, then one BN; each sub-conv takes its own channels of the BN. A channel slice (not
    spatial) or a sliced output used twice must stay unfolded."""

    class Sub(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.top = nn.Conv2d(3, 4, (2, 3), padding=1)  # a 2x3 window, one surplus output row
            self.left = nn.Conv2d(3, 2, (3, 2), padding=1, bias=False)
            self.bn = nn.BatchNorm2d(6)
            self.single = nn.Conv2d(6, 5, 3, padding=1)
            self.bn_single = nn.BatchNorm2d(5)
            self.wide = nn.Conv2d(5, 6, 1)
            self.bn_channels = nn.BatchNorm2d(3)  # after a CHANNEL slice: not foldable

        def forward(self, x):
            a = self.top(x)[:, :, :-1, :]
            b = self.left(x)[:, :, :, 1:]
            y = torch.relu(self.bn(torch.cat([a, b], dim=1)))
            z = torch.relu(self.bn_single(self.single(y)[:, :, 1:, :][:, :, :-1, :]))
            return self.bn_channels(self.wide(z)[:, :3])

    torch.manual_seed(0)
    model = _randomize_bn(Sub())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        folded, count = fold_batchnorm(program, (x,))
        assert count == 2 and _bn_ops(folded) == 1
        torch.testing.assert_close(folded.module()(x), model(x), rtol=1e-5, atol=1e-5)


def _ops(program, name: str) -> int:
    return sum(1 for n in program.graph.nodes if n.op == "call_function" and name in str(n.target))


def _activation_inputs(program) -> list[str]:
    """What each ReLU/hardtanh of ``program`` reads: the op name of its input."""
    return [str(n.args[0].target) for n in program.graph.nodes
            if n.op == "call_function" and ("relu" in str(n.target) or "hardtanh" in str(n.target))]


def test_a_realized_kernel_mix_exports_without_batchnorm_or_activations_of_its_own():
    """ResNet-20 (zoo) with the tiled paper mix on every 3x3 conv, realized: its residual-group layers concatenate
    sub-convs with the zero channels of dropped filters, then BN; its private layers concatenate or slice sub-convs,
    then ReLU. After :func:`prepare_for_lowering` no BatchNorm is left (the zero pieces became the BN's constants),
    every ReLU after a concatenation or slice reads a conv, and the function is unchanged."""
    from host.models.zoo import create_model
    from patterns import LayerAssignment, Plan, prunable_layers, realize

    torch.manual_seed(0)
    model = _randomize_bn(create_model("resnet20", image_size=16))
    x = torch.randn(1, 3, 16, 16)
    convs = [n for n in prunable_layers(model) if n.startswith("layer") and "shortcut" not in n]
    plan = Plan.from_mapping({n: LayerAssignment("kernel", "paper6_tiled") for n in convs})
    realized = realize(model, plan, x).eval()
    with torch.no_grad():
        program = torch.export.export(realized, (x,))
        zeros, cats = _ops(program, "new_zeros"), _ops(program, "aten.cat")
        assert zeros >= 1 and cats >= 1  # the forms this test is about are there
        prepared, folded, moved = prepare_for_lowering(program, (x,))
        assert _bn_ops(prepared) == 0 and folded == _bn_ops(program) and _ops(prepared, "new_zeros") == 0
        assert moved >= 1 and all(src in ("aten.conv2d.default", "aten.add.Tensor", "aten.linear.default")
                                  for src in _activation_inputs(prepared))
        torch.testing.assert_close(prepared.module()(x), realized(x), rtol=1e-5, atol=1e-5)
        # before int8 quantization (host.export.pte) the BNs are folded, the activations stay where they are
        kept, folded_only, none = prepare_for_lowering(program, (x,), activations=False)
        assert _bn_ops(kept) == 0 and folded_only == folded and none == 0
        assert _ops(kept, "relu") == _ops(program, "relu")


def test_an_activation_moves_onto_the_convs_only_when_nothing_else_reads_them():
    """relu(cat(slice(conv_a), conv_b, zeros)) and hardtanh (ReLU6) move onto the convs; a concatenation that
    something else reads, or a clamp that would turn the zero piece into a non-zero constant, keep theirs."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, (2, 3), padding=1)
            self.b = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            y = torch.cat([self.a(x)[:, :, :-1, :], self.b(x), x.new_zeros(1, 2, 8, 8)], dim=1)
            return torch.relu(y) + y  # the concatenation is also read without the activation

    x = torch.randn(1, 3, 8, 8)
    assert push_activations_graph(torch.export.export(Twice().eval(), (x,)).module()) == 0

    class One(nn.Module):
        def __init__(self, act) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, (2, 3), padding=1)
            self.b = nn.Conv2d(3, 2, 3, padding=1)
            self.act = act

        def forward(self, x):
            return self.act(torch.cat([self.a(x)[:, :, :-1, :], self.b(x), x.new_zeros(1, 2, 8, 8)], dim=1))

    torch.manual_seed(0)
    for act, expected in ((nn.ReLU(), 1), (nn.ReLU6(), 1), (nn.Hardtanh(0.5, 6.0), 0)):
        model = One(act).eval()
        with torch.no_grad():
            program = torch.export.export(model, (x,))
            prepared, _, moved = prepare_for_lowering(program, (x,))
            assert moved == expected, act
            if expected:
                assert _activation_inputs(prepared) == ["aten.conv2d.default"] * 2
            torch.testing.assert_close(prepared.module()(x), model(x), rtol=1e-6, atol=1e-6)


def test_pool_defaults_are_spelled_out_for_the_xnnpack_partitioner():
    """``F.max_pool2d(x, 2)`` / ``F.avg_pool2d(x, 3)`` leave the stride out (PyTorch reads: the kernel size): it is
    spelled out; an average pool without padding counts no padding, so ``count_include_pad`` becomes False (XNNPACK
    refuses True); one with padding keeps it; a pool with its own stride is left alone; the function is unchanged."""
    from host.export.fold import spell_pool_defaults

    class Pools(nn.Module):
        def forward(self, x):
            a = nn.functional.max_pool2d(x, 2)
            b = nn.functional.avg_pool2d(x, 3)
            c = nn.functional.max_pool2d(x, 3, 1)
            d = nn.functional.avg_pool2d(x, 3, 1, 1)  # padded: counting the padding changes the border averages
            return a.sum() + b.sum() + c.sum() + d.sum()

    x = torch.randn(1, 2, 12, 12)
    gm = torch.export.export(Pools(), (x,)).module()
    pools = lambda: [n.args for n in gm.graph.nodes if n.op == "call_function" and "pool2d" in str(n.target)]  # noqa: E731
    assert sum(1 for args in pools() if len(args) < 3 or not args[2]) == 2
    assert spell_pool_defaults(gm) == 2
    a, b, c, d = pools()
    assert a[2] == [2, 2] and b[2] == [3, 3] and c[2] == [1, 1]
    assert b[5] is False and (len(d) < 6 or d[5] is True)
    torch.testing.assert_close(gm(x), Pools()(x))
    assert spell_pool_defaults(gm) == 0


def test_a_concatenation_of_one_tensor_is_dropped_unless_it_is_the_output():
    """torchvision's DenseNet concatenates a list of one tensor (XNNPACK takes two or more, so each ran as a portable
    copy): its users read the tensor itself; one that is the graph's output stays."""
    from host.export.fold import drop_single_cats

    class Dense(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(torch.cat([x], 1))
            return torch.cat([y], 1), torch.cat([y, x], 1)

    x = torch.randn(1, 3, 8, 8)
    gm = torch.export.export(Dense().eval(), (x,)).module()
    cats = lambda: [len(n.args[0]) for n in gm.graph.nodes if n.op == "call_function" and "cat" in str(n.target)]  # noqa: E731
    assert sorted(cats()) == [1, 1, 2]
    with torch.no_grad():
        expected = gm(x)
        assert drop_single_cats(gm) == 1
        assert sorted(cats()) == [1, 2]  # the output's stays
        for got, want in zip(gm(x), expected, strict=True):
            torch.testing.assert_close(got, want)


def test_nothing_to_fold_returns_the_same_program():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    program = torch.export.export(model, (x,))
    assert fold_batchnorm(program, (x,)) == (program, 0)
    assert fold_batchnorm_graph(program.module()) == 0


@pytest.mark.executorch
def test_plain_lowering_fails_on_the_hyphenated_conv_bn():
    """The upstream failure the fold routes around; when ExecuTorch fixes it, this test says so."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = _randomize_bn(_HyphenBlocks())
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(Exception, match="FuseBatchNormPass") as info:
        to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    assert "_fused_bn' is not in list" in str(info.value.__cause__)


@pytest.mark.executorch
def test_export_pte_folds_first_and_matches_eager(tmp_path):
    from host.export import export_pte, run_pte

    torch.manual_seed(0)
    model = _randomize_bn(_HyphenBlocks())
    x = torch.randn(1, 3, 8, 8)
    artifact = export_pte(model, (x,), tmp_path / "hyphen.pte")
    other = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(run_pte(artifact.path, (other,))[0], model(other), rtol=1e-4, atol=1e-4)


@pytest.mark.executorch
@pytest.mark.slow
def test_torchvision_regnet_exports_dense(tmp_path):  # regnet_y (with SE) is exported by the corpus test
    require_models_extra()
    from host.export import export_pte, run_pte
    from host.models.loader import load_model

    torch.manual_seed(0)
    model = _randomize_bn(load_model("torchvision:regnet_x_400mf", num_classes=10, image_size=32))
    x = torch.randn(1, 3, 32, 32)
    artifact = export_pte(model, (x,), tmp_path / "regnet_x_400mf.pte")
    other = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_pte(artifact.path, (other,))[0], model(other), rtol=1e-3, atol=1e-3)
