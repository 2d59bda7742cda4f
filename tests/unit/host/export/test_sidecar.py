"""The sidecar next to an artifact: atomic, merges the formats of one model, refuses what it did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.errors import ConfigError
from host.export import Artifact
from host.export.sidecar import read_sidecar, sidecar_path, write_sidecar


def _artifact(path: Path, kind: str) -> Artifact:
    path.write_bytes(b"x")
    return Artifact(path, kind, "ab" * 32, 1, 1e-6, ((1, 3, 8, 8),))


def test_formats_of_one_model_share_a_sidecar(tmp_path):
    model = {"spec": "resnet20", "final": "final-1"}
    path = sidecar_path(tmp_path / "final-1.pte")
    assert path == tmp_path / "final-1.json"
    write_sidecar(path, artifacts=[_artifact(tmp_path / "final-1.pte", "pte")], preprocessing=None, model=model)
    write_sidecar(path, artifacts=[_artifact(tmp_path / "final-1.tflite", "tflite")], preprocessing=None, model=model)
    data = read_sidecar(path)
    assert sorted(data["artifacts"]) == ["final-1.pte", "final-1.tflite"]
    assert data["artifacts"]["final-1.tflite"]["format"] == "tflite" and data["schema_version"] == 1
    # another model at the same path replaces the old entries instead of mixing them
    write_sidecar(path, artifacts=[_artifact(tmp_path / "final-1.pte", "pte")], preprocessing=None,
                  model={"spec": "vgg16"})
    assert sorted(read_sidecar(path)["artifacts"]) == ["final-1.pte"]
    assert not list(tmp_path.glob("*.tmp"))


def test_read_refuses_other_files(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"layers": {}}))
    with pytest.raises(ConfigError, match="not a sculpt-host sidecar"):
        read_sidecar(tmp_path / "plan.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        read_sidecar(tmp_path / "bad.json")
