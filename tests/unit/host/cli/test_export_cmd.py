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
    (["--calibration-images", "8"], "only applies to int8"),
    (["--quantize", "--calibration-images", "0"], "at least 1"),
    (["--input-shape", "1,3,8,8", "--image-size", "8"], "drop --image-size/--channels"),
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


@pytest.mark.slow
def test_pt2_program_exports_and_random_weights_are_called_out(tmp_path, capsys):
    import torch

    from host.models.zoo import create_model

    out = tmp_path / "random.pte"
    assert main(["export", "--model", "resnet20", "--width", "0.25", "--image-size", "8", "--data", "mnist",
                 "--out", str(out)]) == 0  # the same input flags as inspect: 1 x 8 x 8 from the dataset
    captured = capsys.readouterr()
    assert "random initial weights" in captured.err
    sidecar = json.loads((tmp_path / "random.json").read_text())
    assert sidecar["artifacts"]["random.pte"]["sha256"] and sidecar["preprocessing"] is None
    assert sidecar["model"]["input_shape"] == [1, 1, 8, 8]
    assert "random weights: exported without a checkpoint" in sidecar["notes"]
    # a saved ExportedProgram (no eval() of its own) exports, and its weights are not random
    model = create_model("resnet20", width=0.25, in_channels=1, image_size=8).eval()
    program = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 1, 8, 8),)), str(program))
    assert main(["export", "--model", str(program), "--input-shape", "1,1,8,8", "--out", str(tmp_path / "m.pte"),
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "random" not in captured.err
    assert json.loads(captured.out)["artifact"]["max_abs_err"] < 1e-3


@pytest.mark.slow
def test_int8_of_a_kernel_pattern_plan_exports_and_reports_int8_accuracy(tmp_path, capsys, trained_resnet20_mnist):
    # a paper6 plan (off-centre windows sliced after a padded conv, concatenated sub-convs): XNNPACK refused
    # it in int8 ("Failed to create static slice node") before the slices shared their input's qparams
    from tests.fixtures.models import MNIST_IMAGE_SIZE as IMAGE_SIZE

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": {"layer1.0.conv1": {"family": "kernel", "pattern": "paper6"},
                                           "layer1.1.conv2": {"family": "kernel", "pattern": "rowcol"}}}))
    out = tmp_path / "q.pte"
    code = main(["export", "--model", "resnet20", "--plan", str(plan), "--out", str(out), "--data", "mnist",
                 "--image-size", str(IMAGE_SIZE), "--checkpoint", str(trained_resnet20_mnist), "--quantize",
                 "--calibration-images", "16", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["artifact"]["quantized"] and out.is_file()
    scores = result["int8_eval"]
    assert scores["split"] == "val" and scores["images"] > 100
    # the checkpoint is trained (not chance), and int8 costs little on a plan pruned this lightly
    assert scores["fp32"] > 0.5 and abs(scores["int8"] - scores["fp32"]) < 0.05
    assert json.loads((tmp_path / "q.json").read_text())["accuracy"]["int8_eval"] == scores


def test_quantize_without_data_warns_about_random_calibration(tmp_path, capsys):
    out = tmp_path / "q.pte"
    code = main(["export", "--model", "resnet20", "--out", str(out), "--width", "0.25",
                 "--input-shape", "1,3,8,8", "--quantize"])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file()
    assert "calibrates int8 on one random input" in captured.err
