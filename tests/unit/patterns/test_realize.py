"""Property tests: on every zoo model, seeded random plans realize to a dense module that equals the masked
model and whose direct cost equals the masked model's non-zero cost."""

import copy
import random

import pytest
import torch
from torch import nn

from host.errors import PlanError
from host.models import zoo
from patterns import LayerAssignment, Plan, apply_masks, count, layer_choices, realize, validate
from patterns.family import Context
from tests.helpers import zoo_params

MODELS = ["resnet20", "resnet56", "resnet110", "vgg16", "vgg19", "mobilenetv2", "vit_tiny"]


def _model(name: str, size: int = 16) -> nn.Module:
    torch.manual_seed(0)
    model = zoo.create_model(name, width=0.25 if name.startswith(("vgg", "mobilenet")) else 0.5,
                             image_size=size).eval()
    with torch.no_grad():  # trained-looking BN statistics so BN folding/permutation is exercised
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def _random_plan(choices: dict, seed: int, dense_share: float = 0.3) -> Plan:
    rng = random.Random(seed)
    layers = {}
    for layer, options in choices.items():
        if rng.random() < dense_share:
            continue
        family, pattern = rng.choice(options)
        ratio = rng.choice([None, None, 0.5, 1.0]) if family == "kernel" else None
        tile = rng.choice([1, 1, 4, 8]) if family == "kernel" and pattern != "patdnn4" else 1
        layers[layer] = LayerAssignment(family, pattern, ratio=ratio, params=(("tile", tile),) if tile > 1 else ())
    return Plan.from_mapping(layers)


@pytest.mark.parametrize("name", zoo_params(MODELS))
def test_random_plans_realize_exactly(name):
    model = _model(name, size=8)
    x = torch.randn(2, 3, 8, 8)
    choices = layer_choices(model, x)
    base = count(model, x)
    ctx = Context(model, x)  # one dependency graph for all the plans of this model
    examples = 1 if name in ("resnet56", "resnet110", "vgg19") else 2
    for seed in range(examples):
        plan = _random_plan(choices, seed)
        masked = copy.deepcopy(model)
        masks = apply_masks(masked, plan, x, context=ctx)
        realized = realize(model, plan, x, context=ctx)
        with torch.no_grad():
            torch.testing.assert_close(realized(x), masked(x), atol=1e-4, rtol=0)
        masked_cost, realized_cost = count(masked, x), count(realized, x)
        assert realized_cost.macs == masked_cost.macs
        assert realized_cost.params == masked_cost.params
        assert count(model, x, masks).macs == masked_cost.macs  # virtual masks == applied masks
        assert masked_cost.macs < base.macs or not plan.layers
        # Only mask-only patterns leave zeros in the realized module.
        mask_only = [n for n, a in plan if a.pattern in ("2:4", "1:4", "tile4_50", "tile4_75", "patdnn4")]
        if not mask_only:
            assert realized_cost.dense_macs == masked_cost.macs


def test_same_plan_rebuilds_bit_for_bit():
    model = _model("resnet20")
    x = torch.randn(1, 3, 16, 16)
    plan = _random_plan(layer_choices(model, x), seed=7, dense_share=0.0)
    plan = Plan.from_json(plan.to_json())
    first, second = realize(model, plan, x), realize(copy.deepcopy(model), plan, x)
    for (n1, t1), (n2, t2) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(t1, t2)


def test_kernel_row_costs_a_third_and_drop_removes_downstream_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 3, 3, padding=1, bias=False)).eval()
    x = torch.randn(1, 2, 5, 5)
    base = count(model, x)
    assert base.macs == (4 * 2 * 9 + 3 * 4 * 9) * 25
    row = Plan.from_mapping({"0": LayerAssignment("kernel", "row1")})
    assert count(realize(model, row, x), x).dense_macs == (4 * 2 * 3 + 3 * 4 * 9) * 25
    # paper6 on 6 filters: one is dropped, so the next conv loses that input channel too.
    model6 = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                           nn.Conv2d(6, 3, 3, padding=1, bias=False)).eval()
    plan6 = Plan.from_mapping({"0": LayerAssignment("kernel", "paper6")})
    realized = realize(model6, plan6, x)
    kept_per_filter = 3 + 3 + 6 + 6 + 9  # col1, row1, col2, row2, full; the dropped filter costs 0
    assert count(realized, x).dense_macs == (2 * kept_per_filter + 3 * 5 * 9) * 25
    assert not realized.sculpt_notes  # private layer: order folded, no gather


@pytest.mark.parametrize("layers, fragment", [
    ({"nope": LayerAssignment("kernel", "row1")}, "does not have"),
    ({"conv1": LayerAssignment("kernel", "bogus")}, "no pattern 'bogus'"),
    ({"conv1": LayerAssignment("magic", "x")}, "unknown pattern family"),
    ({"fc": LayerAssignment("kernel", "row1")}, "cannot take kernel patterns"),
    ({"conv1": LayerAssignment("channel", "prune50", ratio=1.0)}, "deletes all"),
    ({"layer1.0.conv1": LayerAssignment("kernel", "paper6", ratio=0.0),
      "bn1": LayerAssignment("nm", "2:4")}, "not a prunable layer"),
])
def test_bad_plans_name_the_layer_and_the_fix(layers, fragment):
    model = _model("resnet20")
    with pytest.raises(PlanError, match=fragment) as info:
        validate(Plan.from_mapping(layers), model, torch.randn(1, 3, 16, 16))
    assert info.value.hint


def test_column_blocks_that_remove_every_input_are_rejected():
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    plan = Plan.from_mapping({"0": LayerAssignment("block", "cols4_50", ratio=1.0)})
    with pytest.raises(PlanError, match="removes every input"):
        realize(model, plan, torch.randn(1, 8))


def test_realize_with_weights_from_a_finetuned_copy_keeps_base_decisions():
    model = _model("resnet20")
    x = torch.randn(1, 3, 16, 16)
    plan = Plan.from_mapping({"layer1.0.conv1": LayerAssignment("kernel", "paper6"),
                              "layer2.0.conv1": LayerAssignment("channel", "prune50")})
    tuned = copy.deepcopy(model)
    masks = apply_masks(tuned, plan, x)
    with torch.no_grad():  # "fine-tuning" that reorders filter norms, then re-masking
        for p in tuned.parameters():
            p.mul_(torch.rand_like(p) * 2)
    masks.apply(tuned)
    realized = realize(model, plan, x, weights_from=tuned)
    with torch.no_grad():
        torch.testing.assert_close(realized(x), tuned(x), atol=1e-4, rtol=0)


def test_fuse_batchnorm_keeps_outputs_and_removes_bn_after_pattern_convs():
    from patterns import fuse_batchnorm
    from patterns.pattern_conv import PatternConv

    model = _model("resnet20")
    x = torch.randn(2, 3, 16, 16)
    plan = Plan.from_mapping({"layer1.0.conv1": LayerAssignment("kernel", "paper6"),  # private: folded
                              "layer1.0.conv2": LayerAssignment("kernel", "rowcol"),  # leads its residual group
                              "layer1.1.conv2": LayerAssignment("kernel", "rowcol")})  # same group: gathers
    realized = realize(model, plan, x)
    assert realized.layer1[0].conv2.index is None and realized.layer1[1].conv2.index is not None
    with torch.no_grad():
        expected = realized(x)
        fused = fuse_batchnorm(realized, x)
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(fused.layer1[0].conv2, PatternConv)
    assert isinstance(fused.layer1[0].bn1, nn.Identity) and isinstance(fused.layer1[0].bn2, nn.Identity)
    assert isinstance(fused.layer1[1].bn2, nn.Identity)
    assert isinstance(fused.layer1[1].bn1, nn.BatchNorm2d)  # plain convs are left to the engine


def test_validate_without_example_input_checks_names_and_types():
    model = _model("resnet20")
    validate(Plan.from_mapping({"layer1.0.conv1": LayerAssignment("kernel", "row1"),
                                "conv1": LayerAssignment("channel", "prune25")}), model)
    with pytest.raises(PlanError, match="cannot take 'kernel:row1'"):
        validate(Plan.from_mapping({"fc": LayerAssignment("kernel", "row1")}), model)
    with pytest.raises(PlanError, match="example input"):
        apply_masks(copy.deepcopy(model), Plan.from_mapping({"conv1": LayerAssignment("kernel", "row1")}), None)


def test_channel_multiple_rounds_the_kept_width():
    model = _model("resnet20")  # width 0.5: stage widths 8/16/32
    x = torch.randn(1, 3, 16, 16)
    plan = Plan.from_mapping({"layer3.0.conv1": LayerAssignment("channel", "prune25", params=(("multiple", 8),)),
                              "layer2.0.conv1": LayerAssignment("channel", "prune25")})
    realized = realize(model, plan, x)
    assert realized.layer3[0].conv1.out_channels == 24  # 32 - 8, already a multiple of 8
    assert realized.layer2[0].conv1.out_channels == 12
    plan8 = Plan.from_mapping({"layer2.0.conv1": LayerAssignment("channel", "prune25", params=(("multiple", 8),))})
    assert realize(model, plan8, x).layer2[0].conv1.out_channels == 16  # 12 rounds to 16: nothing removed


def test_tiled_mixes_realize_without_gathers():
    model = _model("resnet20")  # width 0.5: stage widths 8/16/32
    x = torch.randn(2, 3, 16, 16)
    convs = [n for n in ("layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv2", "layer2.1.conv1", "layer2.1.conv2",
                         "layer2.2.conv2", "layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv1")]
    plan = Plan.from_mapping({n: LayerAssignment("kernel", "paper6", params=(("tile", 8),)) for n in convs})
    plan = Plan.from_json(plan.to_json())
    masked = copy.deepcopy(model)
    apply_masks(masked, plan, x)
    realized = realize(model, plan, x)
    assert not realized.sculpt_notes  # no gather anywhere, even with three pattern layers per residual group
    with torch.no_grad():
        torch.testing.assert_close(realized(x), masked(x), atol=1e-4, rtol=0)
    assert count(realized, x).dense_macs == count(masked, x).macs
    for name in convs:
        layer = realized.get_submodule(name)
        assert layer.index is None
        assert all(conv.out_channels % 8 == 0 for conv in layer.convs)  # whole tiles only
    assert realized.layer3[0].conv2.zeros == 8  # a dropped block of a residual conv stays as zero channels
    again = realize(copy.deepcopy(model), plan, x)
    for t1, t2 in zip(realized.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(t1, t2)


@pytest.mark.parametrize("params, fragment", [
    ((("tile", 0),), "positive integer"),
    ((("tile", 2.5),), "positive integer"),
    ((("tile", "8"),), "positive integer"),
    ((("tiles", 8),), "no params"),
])
def test_bad_tile_params_are_rejected(params, fragment):
    model = _model("resnet20")
    plan = Plan.from_mapping({"layer1.0.conv1": LayerAssignment("kernel", "paper6", params=params)})
    for example in (torch.randn(1, 3, 16, 16), None):  # also caught without an example input
        with pytest.raises(PlanError, match=fragment) as info:
            validate(plan, model, example)
        assert info.value.hint


def test_exact_leader_and_tiled_follower_in_one_residual_group():
    model = _model("resnet20")
    x = torch.randn(2, 3, 16, 16)
    plan = Plan.from_mapping({"layer2.0.conv2": LayerAssignment("kernel", "paper6"),
                              "layer2.1.conv2": LayerAssignment("kernel", "paper6", params=(("tile", 8),))})
    masked = copy.deepcopy(model)
    apply_masks(masked, plan, x)
    realized = realize(model, plan, x)
    with torch.no_grad():
        torch.testing.assert_close(realized(x), masked(x), atol=1e-4, rtol=0)
    assert count(realized, x).dense_macs == count(masked, x).macs
    # The tiled layer pins the group's order (whole 8-wide runs, no gather); the exact layer gathers instead.
    assert realized.layer2[1].conv2.index is None
    assert all(conv.out_channels % 8 == 0 for conv in realized.layer2[1].conv2.convs)
    assert realized.layer2[0].conv2.index is not None


def test_a_layer_narrower_than_the_tile_takes_one_shape():
    model = _model("resnet20")  # layer1 has 8 channels, paper6_tiled's default tile is 16
    x = torch.randn(1, 3, 16, 16)
    plan = Plan.from_mapping({"layer1.0.conv1": LayerAssignment("kernel", "paper6_tiled"),
                              "layer1.0.conv2": LayerAssignment("kernel", "paper6_tiled")})
    realized = realize(model, plan, x)
    for name in ("layer1.0.conv1", "layer1.0.conv2"):
        layer = realized.get_submodule(name)
        assert len(layer.convs) == 1 and layer.convs[0].out_channels == 8
        assert layer.convs[0].kernel_size in ((1, 3), (3, 1))  # the mix's middle shape, on the whole layer
