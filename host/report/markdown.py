"""``report.md``: a short human-readable account of a search run."""

from __future__ import annotations

from host.kinds import ObjectiveName, Precision
from host.report.summary import ModelFigures, RunSummary

MAX_INVALID_LINES = 20  # result.json keeps them all; the report stays readable


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _row(summary: RunSummary, m: ModelFigures, devices: list[str], energy_devices: list[str]) -> str:
    cut = 1 - m.macs / summary.dense.macs if summary.dense.macs else 0.0
    lat = " | ".join(f"{m.latency_ms[d]:.3f}" if d in m.latency_ms else "-" for d in devices)
    speed = summary.speedup(m)
    spd = " | ".join(f"{speed[d]:.2f}x" if d in speed else "-" for d in devices)
    energy = "".join(f" {m.energy_mj[d]:.3f} |" if d in m.energy_mj else " - |" for d in energy_devices)
    return (
        f"| {m.name} | {_pct(m.val_accuracy)} | {_pct(m.test_accuracy)} | {m.macs:,} | {100 * cut:.1f}% "
        f"| {m.params:,} | {lat} | {spd} |{energy}"
    )


def _precision_table(summary: RunSummary, devices: list[str]) -> list[str]:
    """int8 searches: every model in fp32 and int8, speed-ups against the fp32 dense (same interleaved rounds)."""
    reference = summary.fp32_twins[0]
    twins = {m.name: m for m in summary.fp32_twins}
    pairs = [(twins[m.name], m) for m in (summary.dense, *summary.finals) if m.name in twins]
    lat_head = " | ".join(f"p50 ms ({d})" for d in devices) or "p50 ms"
    spd_head = " | ".join(f"vs dense fp32 ({d})" for d in devices) or "vs dense fp32"
    lines = ["", "## int8 next to fp32", "",
             "The same models in both precisions, measured in the same interleaved rounds; speed-ups are against "
             "the dense fp32 model.", "",
             f"| model | precision | val acc | test acc | {lat_head} | {spd_head} |",
             "|" + "---|" * (4 + 2 * max(len(devices), 1))]
    for pair in pairs:
        for m in pair:
            lat = " | ".join(f"{m.latency_ms[d]:.3f}" if d in m.latency_ms else "-" for d in devices) or "-"
            spd = " | ".join(f"{reference.latency_ms[d] / m.latency_ms[d]:.2f}x"
                             if d in m.latency_ms and d in reference.latency_ms and m.latency_ms[d] > 0 else "-"
                             for d in devices) or "-"
            lines.append(f"| {m.name} | {m.precision} | {_pct(m.val_accuracy)} | {_pct(m.test_accuracy)} | {lat} "
                         f"| {spd} |")
    return lines


def render_markdown(summary: RunSummary) -> str:
    """The report as Markdown text."""
    devices = sorted(summary.devices)
    lat_head = " | ".join(f"p50 ms ({d})" for d in devices) or "p50 ms"
    spd_head = " | ".join(f"speed-up ({d})" for d in devices) or "speed-up"
    models = [summary.dense, *([summary.best_search] if summary.best_search else []), *summary.finals]
    # energy per inference above idle (the figure the energy reward uses), for devices that measured any
    energy_devices = [d for d in devices if any(d in m.energy_mj for m in models)]
    energy_head = "".join(f" mJ/inference ({d}) |" for d in energy_devices)
    ncols = 6 + 2 * max(len(devices), 1) + len(energy_devices)
    lines = [
        f"# AutoSculpt search: {summary.model} on {summary.dataset}",
        "",
        f"- objective: **{summary.objective}**, target {summary.target}"
        + (" of the dense **int8** model" if summary.precision == Precision.INT8 and summary.objective != ObjectiveName.FLOPS
           else ""),
        "- precision: **int8** (PT2E, XNNPACK quantizer, per-channel weights): accuracies are of the int8 "
        "artifacts run by the ExecuTorch runtime, latencies of the int8 artifacts; fp32 figures are below"
        if summary.precision == Precision.INT8 else "",
        f"- devices: {', '.join(f'{d} (`{fp[:12]}`)' for d, fp in summary.devices.items()) or 'none'}",
        f"- candidates evaluated: {summary.candidates_evaluated} of budget {summary.budget}; "
        f"device measurements taken: {summary.measurements_taken} (benchmarks run on the devices: candidates, "
        "their dense pairs, the side-by-side confirmations and the final rounds); working time {summary.seconds:.0f} s "
        "(summed over the original and any resumed process)",
        "- accuracy for rewards and selection is on the validation split; test accuracy is reported only.",
        "- dense and final models were measured again side by side, in interleaved rounds, for their speed-ups."
        if summary.finals and summary.devices else "",
    ]
    if summary.warnings:
        lines += ["", "## Warnings", ""] + [f"- **{w}**" for w in summary.warnings]
    lines += [
        "",
        f"| model | val acc | test acc | MACs | MAC cut | params | {lat_head} | {spd_head} |{energy_head}",
        "|" + "---|" * ncols,
    ]
    lines += [_row(summary, m, devices, energy_devices) for m in models]
    lines += ["", "![Pareto front](pareto.png)", "", "![Patterns per layer](patterns.png)", "",
              "![Reward curve](reward_curve.png)", ""]
    if summary.fp32_twins:
        lines += _precision_table(summary, devices)
    for m in summary.finals:
        if m.artifacts:
            lines.append(f"- {m.name}: " + ", ".join(f"{k}: `{v}`" for k, v in sorted(m.artifacts.items())))
    if summary.preprocessing:
        pre = summary.preprocessing
        steps = {s["op"]: s for s in pre["steps"]}
        lines += ["", "## Feeding the model", "",
                  f"Input {pre['input']['dtype']} {pre['input']['layout']} {pre['input']['shape']}: uint8 image -> "
                  f"{steps['channels']['to']} channel(s) -> resize to {steps['resize']['size'][0]}x"
                  f"{steps['resize']['size'][1]} ({steps['resize']['method']}) -> / 255 -> (x - mean) / std with "
                  f"mean {[round(v, 4) for v in steps['normalize']['mean']]}, "
                  f"std {[round(v, 4) for v in steps['normalize']['std']]}; output: logits over "
                  f"{pre['output']['num_classes']} classes. Every final-N.json sidecar holds the exact steps."]
    for name, pool in summary.pools.items():
        lines += ["", f"## Board pool {name}", "", "| board | benchmarks | dense p50 (ms) |", "|---|---|---|"]
        lines += [f"| {board} | {n} | {'n/a' if ms is None else f'{ms:.3f}'} |" for board, (n, ms) in pool["boards"].items()]
        if pool.get("offline"):
            lines += ["", f"Left the pool during the run: {', '.join(pool['offline'])}."]
    if summary.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary.notes]
    if summary.invalid:
        lines += ["", "## Plans that could not be built", "",
                  f"{len(summary.invalid)} plan(s) failed to realize or export; each got the invalid reward and "
                  "the search went on without it.", ""]
        for c in summary.invalid[:MAX_INVALID_LINES]:
            layer = f" layer `{c.failed_layer}`" + (f" ({c.choice})" if c.choice else "") + ":" if c.failed_layer else ""
            lines.append(f"- candidate {c.id} ({c.phase}):{layer} {c.reason}")
        if len(summary.invalid) > MAX_INVALID_LINES:
            lines.append(f"- ... {len(summary.invalid) - MAX_INVALID_LINES} more in result.json and journal.sqlite")
    return "\n".join(lines) + "\n"
