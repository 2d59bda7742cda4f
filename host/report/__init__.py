"""Run reports: result.json, report.md, plots and TensorBoard scalars of a search run."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from host.kinds import ObjectiveName
from host.report.summary import InvalidCandidate, ModelFigures, RunSummary

logger = logging.getLogger(__name__)

# the cost axis of each objective (worst device for the measured ones)
COST_LABELS = {ObjectiveName.LATENCY: "latency p50 (ms)", ObjectiveName.ENERGY: "energy (mJ)",
               ObjectiveName.FLOPS: "MACs"}

__all__ = ["InvalidCandidate", "ModelFigures", "RunSummary", "write_report", "write_tensorboard"]


def write_report(
    run_dir: Path,
    summary: RunSummary,
    points: Sequence[tuple[float, float]],
    rewards: Sequence[float],
) -> dict[str, Path]:
    """Write result.json, report.md and the three plots into ``run_dir``; returns their paths.

    ``points`` are the (val accuracy, cost) of the search candidates, the cost in the unit of the summary's
    objective (:data:`COST_LABELS`); ``rewards`` their rewards in order.
    """
    from host.report.markdown import render_markdown
    from host.report.plots import pareto_plot, pattern_map_plot, reward_curve_plot

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"result": run_dir / "result.json", "report": run_dir / "report.md"}
    files["result"].write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    objective = ObjectiveName(summary.objective)
    dense_cost = _cost(summary.dense, objective)
    finals = [(m.name, m.val_accuracy, _cost(m, objective)) for m in summary.finals]
    finals = [(n, a, c) for n, a, c in finals if c is not None]
    files["pareto"] = pareto_plot(
        run_dir / "pareto.png", points,
        None if dense_cost is None else (summary.dense.val_accuracy, dense_cost), finals, COST_LABELS[objective],
    )
    shown = [m for m in ([summary.best_search] if summary.best_search else []) + list(summary.finals) if m.choices]
    files["patterns"] = pattern_map_plot(run_dir / "patterns.png", shown, summary.vocab)
    files["reward_curve"] = reward_curve_plot(run_dir / "reward_curve.png", rewards)
    files["report"].write_text(render_markdown(summary))
    logger.info("report written to %s", files["report"])
    return files


def write_tensorboard(log_dir: Path, rows: Sequence[dict[str, float]]) -> Path:
    """Write one TensorBoard step per search candidate (reward, accuracy, MACs, latency...)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for step, row in enumerate(rows, start=1):
            for key, value in row.items():
                writer.add_scalar(f"search/{key}", value, step)
    finally:
        writer.close()
    return Path(log_dir)


def _cost(m: ModelFigures, objective: ObjectiveName) -> float | None:
    if objective == ObjectiveName.FLOPS:
        return float(m.macs)
    if objective == ObjectiveName.ENERGY:
        return max(m.energy_mj.values()) if m.energy_mj else None
    return max(m.latency_ms.values()) if m.latency_ms else None
