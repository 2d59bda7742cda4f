"""Fleet results as CSV, JSON and a plot of latency per device and model."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

from host.fleet.runner import JobRecord

COLUMNS = [f.name for f in dataclasses.fields(JobRecord)]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def summary(records: list[JobRecord]) -> dict:
    """Counts per status and per device (ok / error / skipped, and which devices went offline)."""
    devices: dict[str, dict] = {}
    for r in records:
        d = devices.setdefault(r.device, {"ok": 0, "error": 0, "skipped": 0, "offline": False})
        d[r.status] += 1
        d["offline"] = d["offline"] or r.error_kind == "offline"
    return {
        "jobs": len(records),
        "ok": sum(r.status == "ok" for r in records),
        "error": sum(r.status == "error" for r in records),
        "skipped": sum(r.status == "skipped" for r in records),
        "devices": devices,
    }


def write_csv(records: list[JobRecord], path: Path) -> Path:
    """One row per job, every JobRecord field as a column (written atomically)."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in records:
            writer.writerow(r.to_json())
    os.replace(tmp, path)
    return path


def write_json(records: list[JobRecord], path: Path) -> Path:
    """``{"summary": ..., "results": [...]}`` (written atomically)."""
    doc = {"summary": summary(records), "results": [r.to_json() for r in records]}
    _atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def log_scale(latencies_ms: list[float]) -> bool:
    """A log axis when the latencies span more than 10x: a linear one hides 0.1 ms bars next to 2 ms ones."""
    values = [v for v in latencies_ms if v > 0]
    return bool(values) and max(values) / min(values) > 10


def write_plot(records: list[JobRecord], path: Path) -> Path | None:
    """Grouped bars: p50 latency per model (group) and device (bar), p90 as the error bar; a log axis when the
    latencies span more than 10x. None if no result."""
    ok = [r for r in records if r.status == "ok" and r.p50_ms is not None]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.artifact for r in ok})
    devices = sorted({r.device for r in records})
    width = 0.8 / max(1, len(devices))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) * max(1, len(devices)) / 2), 4.5))
    for i, device in enumerate(devices):
        xs, p50, up = [], [], []
        for j, model in enumerate(models):
            r = next((r for r in ok if r.device == device and r.artifact == model), None)
            if r is not None:
                xs.append(j + (i - (len(devices) - 1) / 2) * width)
                p50.append(r.p50_ms)
                up.append(max(0.0, (r.p90_ms or r.p50_ms) - r.p50_ms))
        if xs:
            ax.bar(xs, p50, width, yerr=[[0] * len(up), up], capsize=3, label=device)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models, rotation=15, ha="right")
    log = log_scale([r.p50_ms for r in ok])
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(f"latency p50 (ms{', log scale' if log else ''}), bar to p90")
    ax.set_title("Latency per device and model")
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_reports(records: list[JobRecord], out_dir: Path) -> dict[str, Path]:
    """Write results.csv, results.json and latency.png (when there is a result) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(records, out_dir / "results.csv"), "json": write_json(records, out_dir / "results.json")}
    plot = write_plot(records, out_dir / "latency.png")
    if plot is not None:
        paths["plot"] = plot
    return paths
