from __future__ import annotations

import pytest
import torch

from host.errors import ModelError
from host.models.zoo import available_models, create_model
from tests.helpers import zoo_params

ALL = available_models()


def test_names_cover_the_paper_families():
    assert set(ALL) == {"resnet20", "resnet56", "resnet110", "vgg16", "vgg19", "mobilenetv2", "vit_tiny"}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 16), (1, 8, 8)])
def test_forward_any_size(name, shape):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=shape[0], image_size=shape[1], width=0.5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_seed(name):
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(create_model(name, width=0.25).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_resnet_depths_and_option_b_shortcuts():
    def convs(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    for name, depth in (("resnet20", 20), ("resnet56", 56), ("resnet110", 110)):
        model = create_model(name)
        shortcut_convs = [m for m in convs(model) if m.kernel_size == (1, 1)]
        # depth counts the stem, 2 convs per block and the fc; 2 stage transitions get a 1x1 conv shortcut
        assert len(convs(model)) - len(shortcut_convs) + 1 == depth
        assert len(shortcut_convs) == 2


def test_width_scales_channels():
    narrow = sum(p.numel() for p in create_model("resnet20", width=0.5).parameters())
    full = sum(p.numel() for p in create_model("resnet20").parameters())
    assert narrow < 0.4 * full


def test_mobilenet_has_depthwise_convs_and_vit_has_visible_projections():
    mobilenet = create_model("mobilenetv2")
    depthwise = [m for m in mobilenet.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(depthwise) == 17
    vit = create_model("vit_tiny")
    names = {n for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.proj", "blocks.3.mlp.fc2", "head"} <= names


def test_unknown_and_bad_sizes_raise_model_error():
    with pytest.raises(ModelError, match="available models: resnet20"):
        create_model("resnet18")
    with pytest.raises(ModelError):
        create_model("resnet20", num_classes=0)


@pytest.mark.parametrize("name", zoo_params(ALL))
def test_torch_export_matches_eager(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, image_size=16, width=0.25).eval()
    x = torch.randn(2, 1, 16, 16)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.executorch
@pytest.mark.parametrize("name", ["vit_tiny"])  # conv nets are lowered by the export tests
def test_xnnpack_lowering_runs(name):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    torch.manual_seed(0)
    model = create_model(name, in_channels=1, image_size=16, width=0.25).eval()
    x = torch.randn(1, 1, 16, 16)
    program = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])
    buffer = program.to_executorch().buffer
    method = Runtime.get().load_program(buffer).load_method("forward")
    (out,) = method.execute([x])
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
