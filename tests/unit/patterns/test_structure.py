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


class _CascadedHeads(torch.nn.Module):
    """EfficientViT's cascaded group attention, reduced to its channel flow: each head's input is a split
    of the features plus the previous head's output; the heads' outputs are concatenated back."""

    def __init__(self, channels: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(channels // heads, channels // heads, 1)
                                         for _ in range(heads))
        self.proj = torch.nn.Conv2d(channels, channels, 1)
        self.hidden = torch.nn.Conv2d(channels, 32, 1)
        self.out = torch.nn.Conv2d(32, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        chunks = x.chunk(len(self.heads), dim=1)
        outs, feat = [], chunks[0]
        for i, head in enumerate(self.heads):
            feat = head(feat if i == 0 else feat + chunks[i])
            outs.append(feat)
        x = x + self.proj(torch.cat(outs, dim=1))
        return self.out(torch.relu(self.hidden(x)))


def test_a_walk_over_its_budget_becomes_a_barrier_of_everything_it_reached(monkeypatch):
    from patterns import structure

    model = _CascadedHeads().eval()
    x = torch.randn(1, 3, 8, 8)
    full = {g.root: g for g in coupled_groups(model, x)}
    assert not any("walk" in g.barrier for g in full.values())  # within the default budgets
    assert "heads.0" in full["stem"].producers  # the cascade couples the heads with the stream

    monkeypatch.setattr(structure, "WALK_STEPS_PER_EDGE", 0)  # budget: the 64-step floor
    dg = structure.build_dependency_graph(model, x)
    limit = dg.sculpt_meter.limit
    assert limit == 64
    capped = {g.root: g for g in coupled_groups(model, x, dg=dg)}
    assert capped["stem"].barrier.startswith(f"torch-pruning's walk of these channels did not end within {limit}")
    # the layers that walk reached are barriers at once, naming it; a private group is still walked
    assert capped["heads.0"].barrier.startswith("coupled with stem, where torch-pruning's walk")
    assert not capped["hidden"].barrier and capped["hidden"].private
    assert len(capped) > len(full)  # each reached layer is reported on its own, as its walk is not attempted


def test_a_walk_that_maps_too_many_indices_becomes_a_barrier(monkeypatch):
    from patterns import structure

    class FlattenHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.conv(x), 1))

    model, x = FlattenHead().eval(), torch.randn(1, 3, 8, 8)
    assert not {g.root: g for g in coupled_groups(model, x)}["conv"].barrier  # 8 channels -> 512 indices
    monkeypatch.setattr(structure, "WALK_INDEX_ENTRIES", 100)
    group = {g.root: g for g in coupled_groups(model, x)}["conv"]
    assert group.barrier.startswith("torch-pruning's walk of these channels mapped more than 100 channel indices")
