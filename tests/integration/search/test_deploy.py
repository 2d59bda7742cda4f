"""From a search's result to a deployed model: the run keeps the fine-tuned weights, `export --from-run`
re-exports them exactly (.pte and .tflite), and the sidecar's preprocessing, applied here by hand to the raw
MNIST digits, feeds the artifacts to the accuracy the search reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from host.cli.main import main

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.timeout(900)]


def _preprocess_by_hand(images: torch.Tensor, pre: dict) -> torch.Tensor:
    """The sidecar's steps, implemented from its text alone (not with host.data), for uint8 (N, C, H, W)."""
    steps = {s["op"]: s for s in pre["steps"]}
    assert [s["op"] for s in pre["steps"]] == ["channels", "resize", "scale", "normalize"]
    channels = steps["channels"]["to"]
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] == 3 and channels == 1:
        images = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
    resize = steps["resize"]
    assert resize["method"] == "bilinear" and resize["antialias"] and not resize["align_corners"]
    x = F.interpolate(images.float(), size=tuple(resize["size"]), mode="bilinear", align_corners=False,
                      antialias=True).round().clamp(0, 255)
    x = x * steps["scale"]["factor"]
    mean = torch.tensor(steps["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(steps["normalize"]["std"]).view(1, -1, 1, 1)
    return ((x - mean) / std).float()


def _test_images(config, pre: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The run's test split of the raw 28x28 digits, preprocessed by hand."""
    from host.data.sources import read_mnist
    from host.data.splits import stratified_indices

    raw = read_mnist()
    _, _, test = stratified_indices(raw.labels, seed=config.seed, fractions=(0.1, 0.2), limit=config.model.data_limit)
    return _preprocess_by_hand(raw.images[torch.from_numpy(test)], pre), raw.labels[test]


def _accuracy(run_artifact, x: torch.Tensor, labels: np.ndarray) -> float:
    hits = 0
    for i in range(len(x)):
        out = run_artifact(x[i : i + 1])
        hits += int(out[0].reshape(-1).argmax()) == int(labels[i])
    return hits / len(x)


def test_final_model_files_and_side_by_side_figures(tiny_search):
    config, result, _ = tiny_search
    run = config.out
    final = result.finals[0]
    for kind in ("pte", "plan", "pt2", "state_dict", "sidecar"):
        assert (run / final.artifacts[kind]).is_file(), kind
    assert result.schema_version == 3  # precision and fp32_twins since 3
    assert result.preprocessing["input"]["shape"] == [1, 1, 16, 16]
    assert isinstance(final.target_met, bool)
    # the report's speed-up is of dense and final measured again, side by side, in rounds
    assert result.dense.latency_ms["local"] > 0
    sidecar = json.loads((run / "final-1.json").read_text())
    assert sidecar["accuracy"]["test"] == pytest.approx(final.test_accuracy)
    assert sidecar["artifacts"]["final-1.pte"]["sha256"]
    assert json.loads((run / "final-1.plan.json").read_text())["model"] == "resnet20"  # not null
    # the masked state dict loads into the original architecture
    from host.models.loader import load_model

    model = load_model("resnet20", checkpoint=run / "final-1.pt", in_channels=1, image_size=16)
    assert sum(int((p == 0).sum()) for p in model.parameters()) > 0  # pruned weights are zero


@pytest.mark.parametrize("fmt", ["pte", "tflite"])
def test_export_from_run_gives_the_search_accuracy_back(tiny_search, tmp_path, fmt, capsys):
    from host.export import run_pte, run_tflite

    config, result, _ = tiny_search
    out = tmp_path / f"deployed.{fmt}"
    assert main(["export", "--from-run", str(config.out), "--format", fmt, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["artifact"]["path"] == str(out) and out.is_file()
    sidecar = json.loads((tmp_path / "deployed.json").read_text())
    assert sidecar["artifacts"]["deployed." + fmt]["format"] == fmt
    x, labels = _test_images(config, sidecar["preprocessing"])
    runner = run_pte if fmt == "pte" else run_tflite
    accuracy = _accuracy(lambda t: runner(out, (t,)), x, labels)
    assert accuracy == pytest.approx(result.finals[0].test_accuracy, abs=0.005)
    # not a model at chance (10%) that happens to match a chance-level report; the tiny search's final plan (0.7x,
    # one short fine-tune) is chosen on noisy latency figures and scored 46% in one CI rehearsal
    assert accuracy > 0.3


def test_export_from_run_refuses_model_flags_and_missing_runs(tiny_search, tmp_path, capsys):
    config, _, _ = tiny_search
    assert main(["export", "--from-run", str(config.out), "--model", "resnet20"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["export", "--from-run", str(tmp_path)]) == 2
    assert "not a finished search run" in capsys.readouterr().err
    assert main(["export", "--from-run", str(config.out), "--final", "7"]) == 2
    assert "final-1" in capsys.readouterr().err  # names the final models there are
