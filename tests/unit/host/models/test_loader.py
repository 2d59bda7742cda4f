from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from host.errors import ModelError
from host.models.loader import load_model
from host.models.zoo import create_model


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user's own model module on sys.path, with factories of several signatures."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny(num_classes=10, in_channels=3):
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))

        def no_args():
            return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))

        def broken():
            raise RuntimeError("boom")

        def not_a_module():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_models"
    sys.modules.pop("my_models", None)


def test_zoo_name_with_sizes_in_eval_mode():
    model = load_model("ResNet20", num_classes=3, in_channels=1, image_size=16)
    assert not model.training
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 3)


def test_factory_gets_the_kwargs_it_accepts(user_package):
    model = load_model(f"{user_package}:tiny", num_classes=5, in_channels=1, image_size=16)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 5)
    assert isinstance(load_model(f"{user_package}:no_args"), torch.nn.Sequential)


def test_factory_errors(user_package):
    with pytest.raises(ModelError, match="cannot import 'nope_pkg'"):
        load_model("nope_pkg:make")
    with pytest.raises(ModelError, match="has no attribute"):
        load_model(f"{user_package}:missing")
    with pytest.raises(ModelError, match="failed: boom"):
        load_model(f"{user_package}:broken")
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        load_model(f"{user_package}:not_a_module")


def test_unknown_name_lists_available_models():
    with pytest.raises(ModelError) as info:
        load_model("resnet18")
    assert "resnet20" in info.value.hint and "package.module:factory" in info.value.hint


def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(1)
    source = create_model("resnet20", width=0.25, in_channels=1, image_size=8).eval()
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = load_model("resnet20", checkpoint=path, in_channels=1, image_size=8, width=0.25)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    with pytest.raises(ModelError, match="does not fit"):
        load_model("resnet20", checkpoint=path, in_channels=1, image_size=8)  # width 1.0
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_model("resnet20", checkpoint=tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_model("resnet20", checkpoint=tmp_path / "bad.pt")


def test_checkpoint_weights_are_loaded(tmp_path):
    torch.manual_seed(1)
    source = create_model("vit_tiny", in_channels=1, image_size=8).eval()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    torch.manual_seed(99)
    loaded = load_model("vit_tiny", checkpoint=tmp_path / "w.pt", in_channels=1, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_exported_program_pt2(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25, in_channels=1, image_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "missing.pt2"))
    (tmp_path / "bad.pt2").write_bytes(b"zip? no")
    with pytest.raises(ModelError, match="cannot load ExportedProgram"):
        load_model(str(tmp_path / "bad.pt2"))


def test_a_python_file_path_says_how_to_name_its_factory(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text("from torch import nn\n\ndef build():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(ModelError) as info:
        load_model(str(source))
    assert "Python file" in str(info.value) and "mynet:FACTORY" in info.value.hint


def test_a_loaded_program_takes_eval_and_train_like_any_module(tmp_path):
    model = create_model("resnet20", width=0.25, in_channels=1, image_size=8).eval()
    x = torch.randn(1, 1, 8, 8)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(str(path))
    assert loaded.train() is loaded and loaded.training  # the raw program raises "Calling eval() is not supported"
    assert loaded.eval() is loaded and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))  # still the exported inference program


def test_a_file_path_spec_and_a_module_of_the_working_directory_load(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "blocks.py").write_text("from torch import nn\n\ndef head(n):\n    return nn.Linear(4, n)\n")
    (tmp_path / "nets" / "mynet.py").write_text(
        "from torch import nn\nfrom blocks import head\n\n"
        "def build(num_classes=10):\n    return nn.Sequential(nn.Flatten(), head(num_classes))\n")
    model = load_model(f"{tmp_path}/nets/mynet.py:build", num_classes=3)  # its sibling module imports too
    assert model(torch.zeros(1, 1, 2, 2)).shape == (1, 3)
    with pytest.raises(ModelError, match="model file not found"):
        load_model(f"{tmp_path}/nets/nope.py:build")
    # the installed console script does not put the working directory on sys.path; the loader tries it last
    (tmp_path / "cwdnet.py").write_text("from torch import nn\n\ndef build(num_classes=10, in_channels=3):\n"
                                        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.Flatten(),"
                                        " nn.LazyLinear(num_classes))\n")
    script = Path(sys.executable).parent / "sculpt-host"
    done = subprocess.run([str(script), "inspect", "--model", "cwdnet:build", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
