"""timm:NAME / torchvision:NAME loaders and --model-arg parsing (real libraries, nothing downloaded)."""

from __future__ import annotations

import sys

import pytest
import torch

from host.errors import ConfigError, ModelError
from host.models.external import is_external, parse_model_args, parse_value, prepare_torchvision
from host.models.loader import load_model
from tests.helpers import require_models_extra


def test_model_arg_values_are_python_literals_where_possible():
    assert parse_value("2") == 2 and parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("None") is None and parse_value("null") is None
    assert parse_value("(8, 8)") == (8, 8) and parse_value("'relu'") == "relu"
    assert parse_value("relu") == "relu" and parse_value("IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert parse_model_args(["depth=2", "act=gelu", "depth=3", "x="]) == {"depth": 3, "act": "gelu", "x": ""}
    assert parse_model_args(None) == {}
    for bad in ("depth", "=2", "not a key=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_model_args([bad])


def test_external_specs():
    assert is_external("timm:resnet18") and is_external("TorchVision:resnet18")
    assert not is_external("timm:") and not is_external("mypkg.nets:build") and not is_external("resnet20")


@pytest.fixture(scope="module")
def _libraries():
    require_models_extra()


def test_timm_model_gets_sizes_and_model_args(_libraries):
    torch.manual_seed(0)
    vit = load_model("timm:vit_tiny_patch16_224", num_classes=5, in_channels=1, image_size=32,
                     model_args={"patch_size": 8, "depth": 2})
    assert not vit.training and len(vit.blocks) == 2
    assert vit(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    # a convnet refuses img_size: the loader drops the size it added, not the user's arguments
    net = load_model("timm:resnet18", num_classes=3, in_channels=1, image_size=16)
    assert net(torch.randn(1, 1, 16, 16)).shape == (1, 3)
    with pytest.raises(ModelError, match="unexpected keyword argument 'img_size'"):
        load_model("timm:resnet18", model_args={"img_size": 16})


def test_torchvision_model_gets_num_classes_and_model_args(_libraries):
    prepare_torchvision()
    prepare_torchvision()  # once is enough; a second call must not define the ops twice
    assert torch._C._get_schema("torchvision::nms", "") is not None
    net = load_model("torchvision:googlenet", num_classes=4, image_size=32,
                     model_args={"aux_logits": False, "init_weights": False})
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    small = load_model("torchvision:mobilenet_v3_small", num_classes=4, model_args={"width_mult": 0.25})
    assert small(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_external_errors_say_what_to_do(_libraries):
    with pytest.raises(ModelError, match="timm has no architecture 'resnet_nope'") as info:
        load_model("timm:resnet_nope")
    assert "resnet" in info.value.hint
    with pytest.raises(ModelError, match="no classification model 'fasterrcnn"):
        load_model("torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(ModelError, match="3-channel images") as info:
        load_model("torchvision:resnet18", in_channels=1)
    assert "timm" in info.value.hint
    with pytest.raises(ModelError, match="unexpected keyword argument 'nope'"):
        load_model("torchvision:resnet18", model_args={"nope": 1})
    # pretrained weights fix the classes; the error says so instead of downloading anything first
    with pytest.raises(ModelError, match="num_classes") as info:
        load_model("torchvision:resnet18", num_classes=10, model_args={"pretrained": True})
    assert "pretrained" in info.value.hint
    with pytest.raises(ModelError, match="--model-arg does not apply"):
        load_model("resnet20", model_args={"depth": 2})


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_missing_library_names_the_install(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # what importlib sees when the package is not installed
    with pytest.raises(ModelError, match=f"optional package {package}") as info:
        load_model(f"{package}:resnet18")
    assert "pip install" in info.value.hint


def test_factory_models_get_model_args(tmp_path, monkeypatch):
    (tmp_path / "my_ext_models.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=10, hidden=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.Linear(hidden, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model = load_model("my_ext_models:build", num_classes=2, model_args={"hidden": 7})
        assert model[1].out_features == 7 and model[2].out_features == 2
    finally:
        sys.modules.pop("my_ext_models", None)


def test_model_arg_reaches_every_cli_verb_that_takes_a_model(_libraries, capsys):
    import json

    from host.cli.main import build_parser, main
    from host.cli.search_cmd import build_config
    from host.search.config import SearchConfig

    parser = build_parser()
    args = parser.parse_args(["search", "--model", "timm:vit_tiny_patch16_224", "--model-arg", "depth=2",
                              "--model-arg", "patch_size=8", "--checkpoint", "w.pt"])
    config = build_config(args)
    assert config.model.model_args == {"depth": 2, "patch_size": 8}
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))).model.model_args == {"depth": 2,
                                                                                                 "patch_size": 8}
    assert parser.parse_args(["export", "--model", "m", "--out", "m.pte", "--model-arg", "a=1"]).model_args == ["a=1"]
    assert main(["inspect", "--model", "timm:vit_tiny_patch16_224", "--model-arg", "depth=1",
                 "--model-arg", "patch_size=8", "--image-size", "32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "timm:vit_tiny_patch16_224"
    assert any(layer["name"] == "blocks.0.attn.qkv" for layer in summary["layers"])
    assert not any(layer["name"].startswith("blocks.1.") for layer in summary["layers"])
