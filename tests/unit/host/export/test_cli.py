"""`sculpt-host export` end to end on a small zoo model (real export, real runtime)."""

import json

import pytest

from host.cli.main import main


@pytest.mark.slow
def test_export_command_writes_a_verified_pte(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"schema_version": 1, "layers": {
        "layer1.0.conv1": {"family": "kernel", "pattern": "paper6"},
        "layer2.0.conv1": {"family": "channel", "pattern": "prune50"}}}))
    out = tmp_path / "m.pte"
    code = main(["export", "--model", "resnet20", "--plan", str(plan), "--out", str(out), "--width", "0.25",
                 "--input-shape", "1,3,8,8", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert out.stat().st_size == result["artifact"]["size_bytes"]
    assert result["dense_macs"] < result["base_macs"] and result["mac_reduction"] > 0
    assert result["artifact"]["max_abs_err"] < 1e-3


@pytest.mark.parametrize("argv, fragment", [
    (["--input-shape", "1,3,8"], "four positive integers"),
    (["--plan", "missing.json"], "cannot read plan"),
    (["--format", "tflite", "--quantize"], "only available with --format pte"),
])
def test_export_command_bad_input_exits_with_a_hint(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["export", "--model", "resnet20", "--out", str(tmp_path / "x.pte"), *argv])
    assert code == 2
    assert fragment in capsys.readouterr().err


def test_export_command_unknown_layer_in_plan(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"layers": {"nope": {"family": "kernel", "pattern": "row1"}}}')
    code = main(["export", "--model", "resnet20", "--plan", str(plan), "--out", str(tmp_path / "x.pte"),
                 "--width", "0.25", "--input-shape", "1,3,8,8"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "hint:" in err
