"""Reports: result.json round-trips, report.md lists every model, the plots and TensorBoard files exist."""

from __future__ import annotations

import json

from host.report import ModelFigures, RunSummary, write_report, write_tensorboard


def _summary() -> RunSummary:
    dense = ModelFigures("dense", 0.97, 1_000_000, 20_000, latency_ms={"local": 2.0})
    final = ModelFigures(
        "final-1", 0.95, 400_000, 9_000, latency_ms={"local": 1.0}, test_accuracy=0.94,
        choices={"conv1": "keep", "layer1.0.conv1": "drop"}, artifacts={"pte": "final-1.pte"},
    )
    return RunSummary(
        model="resnet20", dataset="mnist", objective="latency", target="0.5x", devices={"local": "f" * 40},
        budget=10, candidates_evaluated=10, measurements_taken=7, seconds=12.0, dense=dense, finals=(final,),
        vocab=("keep", "drop"),
    )


def test_write_report(tmp_path):
    summary = _summary()
    files = write_report(tmp_path, summary, [(0.9, 1.5), (0.93, 1.8), (0.8, 1.0)], [0.5, 0.7, 0.6])
    for key in ("result", "report", "pareto", "patterns", "reward_curve"):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    data = json.loads(files["result"].read_text())
    assert data["finals"][0]["test_accuracy"] == 0.94
    assert data["dense"]["latency_ms"] == {"local": 2.0}
    text = files["report"].read_text()
    assert "| final-1 | 95.00% | 94.00% | 400,000 | 60.0% |" in text
    assert "2.00x" in text  # speed-up of final over dense
    assert summary.speedup(summary.finals[0]) == {"local": 2.0}


def test_energy_column_only_for_metered_devices():
    from dataclasses import replace

    from host.report.markdown import render_markdown

    summary = _summary()
    assert "mJ" not in render_markdown(summary)  # latency-only run: no energy column
    summary = replace(summary, dense=replace(summary.dense, energy_mj={"local": 4.0}),
                      finals=(replace(summary.finals[0], energy_mj={"local": 1.5}),))
    text = render_markdown(summary)
    assert "| mJ/inference (local) |" in text
    assert "| 1.00x | 4.000 |" in text and "| 2.00x | 1.500 |" in text  # dense, final


def test_tensorboard(tmp_path):
    log_dir = write_tensorboard(tmp_path / "tb", [{"reward": 0.1, "accuracy": 0.9}, {"reward": 0.2, "accuracy": 0.8}])
    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir())


def _objective(target: str, name: str = "latency"):
    from host.search.reward import Objective, Target

    if name == "flops":
        return Objective(name="flops", target_flops=float(target))
    return Objective(name=name, target=Target.parse(target, name))


def test_missed_target_and_slower_than_dense_are_flagged():
    from dataclasses import replace

    from host.report.markdown import render_markdown
    from host.search.final import target_verdicts

    summary = _summary()  # final runs at 1.0 ms against dense 2.0 ms
    met = target_verdicts(summary, _objective("0.5x"))
    assert met.finals[0].target_met is True and met.warnings == ()
    missed = target_verdicts(summary, _objective("0.4x"))
    assert missed.finals[0].target_met is False
    assert len(missed.warnings) == 1 and "missed the latency target 0.4x on local" in missed.warnings[0]
    assert "0.50x of dense" in missed.warnings[0]
    slow = replace(summary, finals=(replace(summary.finals[0], latency_ms={"local": 2.5}),))
    slow = target_verdicts(slow, _objective("0.5x"))
    assert any("SLOWER than dense on local: 2.500 ms vs 2.000 ms" in w for w in slow.warnings)
    text = render_markdown(slow)
    assert "## Warnings" in text and "SLOWER than dense" in text
    flops = target_verdicts(summary, _objective("0.7", "flops"))  # the final removes 60% of the MACs
    assert flops.finals[0].target_met is False
    assert flops.warnings == ("final-1 missed the 70% MAC reduction target: it removes 60.0%",)
    assert target_verdicts(summary, _objective("0.6", "flops")).finals[0].target_met is True
    assert json.loads(json.dumps(missed.to_dict()))["finals"][0]["target_met"] is False
    collapsed = replace(summary, finals=(replace(summary.finals[0], val_accuracy=0.5),))
    assert any("47.0 points less accurate than dense" in w for w in target_verdicts(collapsed, _objective("0.5x")).warnings)
