import torch

from host.models import zoo
from patterns import choices_for, coupled_groups, layer_choices, prunable_layers
from patterns.vit import role_of


def _groups(name):
    model = zoo.create_model(name, width=0.25, image_size=8).eval()
    return model, {g.root: g for g in coupled_groups(model, torch.randn(1, 3, 8, 8))}


def test_resnet_groups_tell_private_from_residual():
    model, groups = _groups("resnet20")
    block = groups["layer1.0.conv1"]
    assert block.private and block.consumers == ("layer1.0.conv2",)
    residual = groups["conv1"]  # the stem's channels run through every identity shortcut of stage 1
    assert not residual.private
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(residual.producers)
    # every prunable layer's output channels belong to exactly one reported group
    covered = [p for g in groups.values() for p in g.producers]
    assert sorted(covered) == sorted(prunable_layers(model))


def test_depthwise_and_layernorm_coupling():
    _, groups = _groups("mobilenetv2")
    expand = next(g for g in groups.values() if any(m.module_type == "Conv2d" and m.name.endswith("conv.1.0")
                                                    for m in g.members) and g.root.endswith("conv.0.0"))
    assert not expand.private  # the depthwise conv's filters are tied to the expand conv's channels
    model, groups = _groups("vit_tiny")
    assert groups["patch_embed"].has_layernorm
    x = torch.randn(1, 3, 8, 8)  # an MLP is found from the coupling, which needs an input
    assert role_of(model, "blocks.0.attn.q", x) == "attention" and role_of(model, "blocks.0.mlp.fc1", x) == "mlp"
    assert role_of(model, "blocks.0.attn.k", x) == "" and role_of(model, "blocks.0.mlp.fc2", x) == ""
    assert role_of(model, "blocks.0.mlp.fc1") == ""  # no input, no coupling: no MLP claimed


def test_choices_depend_on_layer_kind():
    model = zoo.create_model("vit_tiny", width=0.25, image_size=8).eval()
    choices = layer_choices(model, torch.randn(1, 3, 8, 8))
    assert ("vit", "heads50") in choices["blocks.0.attn.q"]
    assert ("vit", "hidden50") in choices["blocks.0.mlp.fc1"]
    assert ("channel", "prune50") in choices["patch_embed"]  # the residual stream, through its LayerNorms
    assert all(c[0] in ("keep", "nm", "block") for c in choices["blocks.0.attn.k"])
    conv = torch.nn.Conv2d(4, 8, 3)
    assert choices_for(conv)[0] == ("keep", "dense") and ("kernel", "paper6") in choices_for(conv)
    assert ("kernel", "patdnn4") not in choices_for(torch.nn.Conv2d(4, 8, 5))
