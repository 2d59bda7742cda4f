"""``sculpt-host fleet bench``: every artifact on every selected device, in parallel across devices."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from host.cli.devices_cmd import add_connection_args, connect_options


def register(subparsers) -> None:
    parser = subparsers.add_parser("fleet", help="benchmark artifacts across a fleet of boards",
                                   description="Benchmark artifacts across the boards of a fleet file.")
    sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = sub.add_parser("bench", help="run every model on every selected device",
                       description="Run every MODEL (.pte / .tflite) on every selected device of the fleet file: "
                                   "devices in parallel, one benchmark per device at a time. Results are appended "
                                   "to OUT/results.jsonl as they finish; a rerun with the same --out skips jobs "
                                   "that already succeeded.")
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL", help=".pte or .tflite artifacts")
    p.add_argument("--out", type=Path, required=True, help="output directory (results.jsonl/.csv/.json, latency.png)")
    p.add_argument("--tags", action="append", default=[], help="only devices carrying this tag (repeatable)")
    p.add_argument("--device", action="append", default=[], dest="names", metavar="NAME",
                   help="only this fleet device (repeatable)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5)")
    p.add_argument("--runs", type=int, default=50, help="minimum timed runs (default 50)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds (default 1)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the fleet file's, else runtime's)")
    p.add_argument("--bench-timeout", type=float, default=120.0, help="agent-side deadline per benchmark, s")
    p.add_argument("--energy", action="store_true", help="measure energy where a meter exists")
    p.add_argument("--retries", type=int, default=3, help="retries of a call after UNAVAILABLE (default 3)")
    p.add_argument("--offline-after", type=int, default=2,
                   help="device-level failures in a row before a device is marked offline (default 2)")
    p.add_argument("--no-resume", action="store_true", help="rerun jobs already recorded as ok in --out")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_args(p)
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from host.devices.results import BenchPolicy, BenchSpec
    from host.devices.retry import RetryPolicy
    from host.errors import ConfigError
    from host.fleet.file import load_fleet
    from host.fleet.report import summary, write_reports
    from host.fleet.runner import BenchArtifact, FleetRunConfig, FleetRunner, FleetTarget

    if args.fleet is None:
        raise ConfigError("fleet bench needs --fleet FILE", hint="see deploy/fleet.example.toml")
    fleet = load_fleet(args.fleet)
    devices = fleet.select(args.tags, args.names)
    artifacts = []
    for model in args.models:
        if not model.is_file():
            raise ConfigError(f"model file {model} does not exist", hint="pass .pte or .tflite files")
        if model.suffix.lower() not in (".pte", ".tflite"):
            raise ConfigError(f"{model} is neither .pte nor .tflite", hint="export it first: sculpt-host export")
        artifacts.append(BenchArtifact.from_path(model))
    retry = RetryPolicy(attempts=max(1, args.retries + 1))
    targets = [
        FleetTarget(name=d.name, address=d.address,
                    options=dataclasses.replace(connect_options(args, d), retry=retry),
                    runtime=d.runtime, threads=args.threads if args.threads is not None else d.threads)
        for d in devices
    ]
    policy = BenchPolicy(warmup_runs=args.warmup, min_runs=args.runs, min_seconds=args.seconds,
                         max_seconds=max(10.0, args.seconds * 4))

    def make_spec(target: FleetTarget, artifact: BenchArtifact, job_id: str) -> BenchSpec:
        return BenchSpec(threads=target.threads or 0, policy=policy, job_id=job_id, timeout_s=args.bench_timeout,
                         measure_energy=args.energy)

    records = _run_with_progress(FleetRunner, targets, artifacts, make_spec, args,
                                 FleetRunConfig(offline_after=args.offline_after, resume=not args.no_resume))
    files = write_reports(records, args.out)
    info = summary(records)
    if args.json:
        print(json.dumps({"summary": info, "results": [r.to_json() for r in records],
                          "files": {k: str(v) for k, v in files.items()}}, indent=2, sort_keys=True))
    else:
        _print_table(records)
        print(f"{info['ok']} ok, {info['error']} failed, {info['skipped']} skipped; "
              + ", ".join(f"{k}: {v}" for k, v in files.items()))
    return 0 if info["error"] == 0 else 1


def _run_with_progress(runner_cls, targets, artifacts, make_spec, args, config):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.fields[device]:<16}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[state]}"), TimeElapsedColumn(), console=console,
                        disable=not sys.stderr.isatty() or args.json)
    tasks = {t.name: progress.add_task("", total=len(artifacts), device=t.name, state="waiting") for t in targets}

    def on_event(device: str, what: str, payload) -> None:
        task = tasks[device]
        if what == "start":
            progress.update(task, state=f"running {payload.name}")
        elif what == "connect":
            progress.update(task, state="connecting")
        elif what == "offline":
            progress.update(task, state=f"[red]offline: {payload}")
        elif what == "skip-done":
            progress.advance(task)
        elif what == "done":
            progress.advance(task)
            text = (f"{payload.artifact}: p50 {payload.p50_ms:.2f} ms" if payload.status == "ok"
                    else f"{payload.artifact}: {payload.status} {payload.error_type or ''}")
            progress.update(task, state=text)
            if progress.disable and not args.json:  # no live bar (not a terminal): one line per job
                console.log(f"{device}: {text}")

    with progress:
        runner = runner_cls(targets, artifacts, make_spec, args.out, config=config, on_event=on_event)
        return runner.run()


def _print_table(records) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fleet bench")
    for c in ("device", "model", "precision", "status", "p50 ms", "p90 ms", "cv", "runs", "detail"):
        table.add_column(c)
    for r in records:
        ok = r.status == "ok"
        table.add_row(r.device, r.artifact, r.precision or "?", r.status,
                      f"{r.p50_ms:.3f}" if ok else "", f"{r.p90_ms:.3f}" if ok else "",
                      f"{r.cv:.3f}" if ok and r.cv is not None else "", str(r.runs or "") if ok else "",
                      "" if ok else f"{r.error_kind or ''}: {r.error_code or r.error_type or ''}")
    Console(width=max(Console().width, 120)).print(table)
