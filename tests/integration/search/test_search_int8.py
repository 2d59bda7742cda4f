"""An int8 search end to end against a real local agent: every measured candidate (dense and the floor plan
included) is realized with its recovered weights, quantized on training images, scored by the ExecuTorch
runtime and measured in int8; the final model is written in both precisions and reported side by side."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from torch import nn

from host.search.journal import Journal
from tests.integration.search.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.executorch, pytest.mark.slow, pytest.mark.timeout(900)]


class SmallNet(nn.Module):
    """A user's small CNN (not a zoo model): lowering it takes a few seconds, so the int8 search stays cheap."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def build(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return SmallNet(num_classes, in_channels)


@pytest.fixture(scope="module")
def int8_search(tmp_path_factory, monkeypatch_module):
    from host.search.runner import SearchRunner
    from host.search.space import SearchSpace

    spaces, build_space = [], SearchSpace.__init__

    def keep_space(self, *args, **kwargs):
        build_space(self, *args, **kwargs)
        spaces.append(self)

    root = tmp_path_factory.mktemp("int8")
    monkeypatch_module.setenv("AUTOSCULPT_CACHE_DIR", str(root / "cache"))  # its checkpoint is trained here
    base = tiny_config(root / "run", None)
    # the int8 net runs in ~0.016 ms, its floor plan at ~0.69x of that: 0.9x leaves room for the noise of
    # figures this small (0.7x failed the reachability check about one run in two)
    config = replace(base, precision="int8", budget=2, target="0.9x",
                     model=replace(base.model, model=f"{__name__}:build", checkpoint=None, train_epochs=15),
                     evaluation=replace(base.evaluation, calibration_images=8))
    with pytest.MonkeyPatch.context() as patch:  # the search space the run builds, kept for the tests
        patch.setattr(SearchSpace, "__init__", keep_space)
        result = SearchRunner.start(config).run()
    return config, result, spaces


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_int8_search_rewards_and_reports_int8(int8_search):
    config, result, _ = int8_search
    run = config.out
    assert result.precision == "int8"
    dense, final = result.dense, result.finals[0]
    assert dense.precision == final.precision == "int8"
    twins = {m.name: m for m in result.fp32_twins}
    assert set(twins) == {"dense", "final-1"} and all(m.precision == "fp32" for m in twins.values())
    # int8 and fp32 models measured in the same rounds; int8 accuracy close to fp32 on a trained model
    for name, m in (("dense", dense), ("final-1", final)):
        assert m.latency_ms["local"] > 0 and twins[name].latency_ms["local"] > 0
        assert abs(m.val_accuracy - twins[name].val_accuracy) < 0.05, name
        assert m.test_accuracy is not None and twins[name].test_accuracy is not None

    with Journal.open(run) as journal:
        dense_row = journal.candidates("dense")[0]
        assert dense_row.int8_accuracy is not None and dense_row.int8_accuracy > 0.5
        measured = [r for r in journal.candidates() if r.measurement and not r.reused and r.phase != "final"]
        assert len(measured) >= 2  # dense and the floor plan at least
        assert all(r.int8_accuracy is not None for r in measured)
        # a measured search candidate's reward is computed from its int8 accuracy and int8 latency
        objective = config.reward_objective()
        dense_ms = {d: m.p50_ms for d, m in dense_row.measurement.items()}
        for row in (r for r in measured if r.phase == "search"):
            figures = {d: m.p50_ms for d, m in row.measurement.items()}
            paired = {d: m.dense_p50_ms for d, m in row.measurement.items()}  # dense int8, right after it
            assert paired.keys() == dense_ms.keys()
            expected = objective.reward(row.int8_accuracy, row.macs, dense_row.macs, measured=figures,
                                        dense_measured=paired)
            assert row.reward == pytest.approx(expected)
        final_row = journal.candidates("final")[0]
        assert final_row.int8_accuracy == pytest.approx(result.finals[0].val_accuracy)

    sidecar = json.loads((run / "final-1-int8.json").read_text())
    entry = sidecar["artifacts"]["final-1-int8.pte"]
    assert entry["int8"] is True and entry["format"] == "pte"
    accuracy = sidecar["accuracy"]  # as `export --from-run --quantize` writes it
    assert accuracy["val"] == pytest.approx(twins["final-1"].val_accuracy)
    assert accuracy["int8_eval"]["int8"] == pytest.approx(final.val_accuracy, abs=1e-4)
    assert accuracy["int8_test_eval"]["int8"] == pytest.approx(final.test_accuracy, abs=1e-4)
    assert (run / "final-1.pte").is_file() and (run / "final-1-int8.pte").is_file()
    assert final.artifacts["int8_pte"].endswith("final-1-int8.pte")
    report = (run / "report.md").read_text()
    assert "int8 next to fp32" in report and "precision: **int8**" in report


def test_int8_artifact_runs_in_the_agent(int8_search):
    """The int8 final artifact is what the agent benchmarks (its input is fp32, quantized inside)."""
    import torch

    from host.export.pte import run_pte

    config, _result, _ = int8_search
    out = run_pte(config.out / "final-1-int8.pte", [torch.zeros(1, 1, 16, 16)])
    assert tuple(out[0].shape) == (1, 10)


def test_an_int8_search_does_not_offer_the_exact_kernel_mixes(int8_search):
    """The search space of an int8 search leaves out the exact per-filter kernel mixes (slow on XNNPACK and slow to
    quantize) and keeps their tile-aligned form."""
    from host.search.space import INT8_EXCLUDED

    _config, _result, spaces = int8_search
    space = spaces[0]
    offered = {space.vocab[k] for k in np.flatnonzero(space.choice_mask.any(axis=0))}
    assert INT8_EXCLUDED and not offered & set(INT8_EXCLUDED)
    assert "kernel:paper6_tiled" in offered
