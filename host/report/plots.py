"""Plots of a search run: accuracy-vs-cost Pareto front, per-layer pattern map, reward curve (PNG files)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from host.report.pareto import pareto_front  # noqa: E402
from host.report.summary import ModelFigures  # noqa: E402

logger = logging.getLogger(__name__)


def pareto_plot(
    path: Path,
    points: Sequence[tuple[float, float]],
    dense: tuple[float, float] | None,
    finals: Sequence[tuple[str, float, float]] = (),
    cost_label: str = "latency p50 (ms)",
) -> Path:
    """Scatter of (accuracy, cost) candidates with their Pareto front, the dense model and the finals."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if points:
        acc = np.array([p[0] for p in points]) * 100
        cost = np.array([p[1] for p in points])
        ax.scatter(cost, acc, s=14, c="#9aa5b1", label="search candidates")
        front = pareto_front(points)
        ax.plot(cost[front], acc[front], "-o", c="#1f77b4", ms=4, label="Pareto front")
    if dense is not None:
        ax.scatter([dense[1]], [dense[0] * 100], marker="*", s=160, c="#d62728", label="dense", zorder=5)
    for name, a, c in finals:
        ax.scatter([c], [a * 100], marker="D", s=50, c="#2ca02c", zorder=6)
        ax.annotate(name, (c, a * 100), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(cost_label)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def pattern_map_plot(path: Path, models: Sequence[ModelFigures], vocab: Sequence[str]) -> Path:
    """Heat map: one row per model, one column per prunable layer, colour = the layer's pattern choice.

    Only the choices that occur are in the legend (the full vocabulary has ~20 entries).
    """
    layers: list[str] = []
    for m in models:
        for layer in m.choices:
            if layer not in layers:
                layers.append(layer)
    order = {name: i for i, name in enumerate(vocab)}
    used = sorted({c for m in models for c in m.choices.values()}, key=lambda c: order.get(c, len(order)))
    index = {name: i for i, name in enumerate(used)}
    grid = np.full((max(len(models), 1), max(len(layers), 1)), np.nan)
    for r, m in enumerate(models):
        for c, layer in enumerate(layers):
            if layer in m.choices:
                grid[r, c] = index[m.choices[layer]]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(layers) + 3), 1.6 + 0.45 * len(models)))
    cmap = plt.get_cmap("tab20", max(len(used), 1))
    im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-0.5, vmax=max(len(used), 1) - 0.5)
    ax.set_yticks(range(len(models)), [m.name for m in models], fontsize=8)
    ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=6)
    cbar = fig.colorbar(im, ax=ax, ticks=range(len(used)))
    cbar.ax.set_yticklabels(used, fontsize=7)
    ax.set_title("Pattern per layer")
    return _save(fig, path)


def reward_curve_plot(path: Path, rewards: Sequence[float]) -> Path:
    """Reward of every search candidate in evaluation order, with the running best."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(1, len(rewards) + 1)
    ax.plot(x, rewards, ".", c="#9aa5b1", label="candidate")
    if len(rewards):
        ax.plot(x, np.maximum.accumulate(np.asarray(rewards, float)), "-", c="#1f77b4", label="best so far")
    ax.set_xlabel("candidate")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.debug("wrote %s", path)
    return path
