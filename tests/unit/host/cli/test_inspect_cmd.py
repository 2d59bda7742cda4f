from __future__ import annotations

import json
import subprocess
import textwrap

import torch

from host.cli.main import main


def test_inspect_json_for_mnist_sized_resnet(capsys):
    assert main(["inspect", "--model", "resnet20", "--data", "mnist", "--image-size", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema_version"] == 1
    assert data["input_shape"] == [1, 16, 16] and data["num_classes"] == 10
    assert len(data["layers"]) == 22 and data["layers"][0]["in_channels"] == 1
    assert data["total_macs"] == sum(layer["macs"] for layer in data["layers"])
    assert any(g["producers"][:1] == ["conv1"] for g in data["groups"])
    assert "kernel:paper6" in data["layers"][1]["choices"]


def test_inspect_human_table(capsys):
    assert main(["inspect", "--model", "vit_tiny", "--image-size", "16", "--width", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "26 prunable layers" in out and "blocks.0.attn.q" in out and "attn_q" in out
    assert "coupled channel groups" in out and "vit:heads50" in out


def test_inspect_user_factory_with_checkpoint(tmp_path, monkeypatch, capsys):
    (tmp_path / "netpkg.py").write_text(textwrap.dedent("""
        from torch import nn

        def make(num_classes=10, in_channels=3):
            return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    state = {"0.weight": torch.zeros(8, 3, 3, 3), "0.bias": torch.zeros(8),
             "4.weight": torch.randn(4, 8), "4.bias": torch.zeros(4)}
    torch.save(state, tmp_path / "ckpt.pt")
    assert main(["inspect", "--model", "netpkg:make", "--num-classes", "4", "--checkpoint",
                 str(tmp_path / "ckpt.pt"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == ["0", "4"]
    assert data["layers"][0]["weight"]["sparsity"] == 1.0  # the checkpoint's zero weights were loaded
    assert data["edges"] == [{"src": "0", "dst": "4", "type": "sequential"}]


def test_inspect_errors_exit_nonzero(capsys):
    assert main(["inspect", "--model", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet18'" in err and "resnet20" in err
    assert main(["inspect", "--data", "imagefolder"]) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_console_script(venv_bin):
    result = subprocess.run([str(venv_bin / "sculpt-host"), "inspect", "--model", "resnet20", "--width", "0.25",
                             "--image-size", "8", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layers"][-1]["name"] == "fc"
