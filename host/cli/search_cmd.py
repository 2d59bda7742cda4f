"""``sculpt-host search``: the GNN + RL pruning search with a hardware-aware reward.

With no arguments it runs the built-in default (ResNet-20 on the 5k MNIST digits, the local agent, the
latency objective at 0.5x dense) into ``runs/search``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from host.kinds import Aggregate, ConstraintName, ObjectiveName, Precision, Strategy, choices

if TYPE_CHECKING:
    from rich.progress import TaskID

    from host.report.summary import ModelFigures, RunSummary
    from host.search.config import SearchConfig
    from host.search.progress import Progress

DEFAULT_OUT = "runs/search"


def register(subparsers: argparse._SubParsersAction) -> None:
    from host.search.config import DEFAULT_TARGET, EvalConfig, ModelSpec, SearchConfig

    # every default below is the config dataclasses' own (one place), shown in the help text
    cfg, spec, ev = SearchConfig(), ModelSpec(), EvalConfig()
    p = subparsers.add_parser(
        "search",
        help="search per-layer pruning patterns with a GNN + PPO policy, rewarded by measured latency",
        description="Search per-layer pruning patterns for a model with a GNN + PPO policy (or, with --strategy, "
        "a baseline: random plans or aging evolution). Rewards use the "
        "validation accuracy and the latency/energy measured on the device(s); the best plans are "
        "fine-tuned, exported and benchmarked. With no arguments: resnet20 on mnist, local agent.",
    )
    p.add_argument("--model", default=spec.model,
                   help=f"zoo name, timm:NAME, torchvision:NAME, package.module:factory, or .pt2 (default {spec.model})")
    p.add_argument("--model-arg", action="append", dest="model_args", metavar="KEY=VALUE",
                   help="constructor argument for timm/torchvision/factory models, repeatable (e.g. depth=2)")
    p.add_argument("--data", default=spec.data, help=f"dataset name (default {spec.data})")
    p.add_argument("--checkpoint", help="trained state dict of the model (default: train and cache one)")
    p.add_argument("--data-root", help="folder of a local dataset (cifar10, imagefolder)")
    p.add_argument("--image-size", type=int, default=spec.image_size,
                   help=f"input size in pixels (default {spec.image_size})")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="input channels (default: the dataset's own: 1 for mnist/digits, 3 for cifar10/imagefolder)")
    p.add_argument("--width", type=float, default=spec.width, help=f"zoo model width multiplier (default {spec.width:g})")
    p.add_argument("--data-limit", type=int, help="use a stratified subset of N images")
    p.add_argument("--device", action="append", dest="devices", metavar="ADDRESS",
                   help="device to measure on: local, grpc[s]://host:port, user@host or a --fleet name "
                        "(repeat for several)")
    p.add_argument("--device-pool", action="append", dest="device_pools", metavar="NAME=ADDR,ADDR,...",
                   help="identical boards measured as one device NAME: each candidate (with its dense pair) on "
                        "whichever board is free, several at once; repeatable")
    p.add_argument("--fleet", help="fleet file whose device names --device may use, with their credentials "
                                   "(see deploy/fleet.example.toml)")
    p.add_argument("--budget", type=int, default=None,
                   help=f"candidates to evaluate in the search (default {cfg.budget}; with --resume, a larger "
                        "budget continues the search further)")
    p.add_argument("--objective", choices=choices(ObjectiveName), default=cfg.objective)
    p.add_argument("--target-flops", type=float, default=cfg.target_flops,
                   help=f"MAC reduction for --objective flops ({cfg.target_flops:g})")
    p.add_argument("--target-latency", "--target-energy", "--target", dest="target", default=None,
                   help=f"latency/energy target: {DEFAULT_TARGET} of dense (default) or absolute like 12ms / 3mJ")
    p.add_argument("--constraint", choices=choices(ConstraintName), default=cfg.constraint,
                   help="reward shape acc*(m/T)^w, w below/above the target: hard 0/-1 (default: the most "
                   "accurate plan that meets the target), balanced -0.07/-0.5, soft -0.5/-0.5, mnasnet -0.07/-0.07")
    p.add_argument("--aggregate", choices=choices(Aggregate), default=cfg.aggregate,
                   help="how several devices combine (default: worst case)")
    p.add_argument("--final-top", type=int, default=cfg.final_top,
                   help=f"Pareto-front plans to fine-tune and verify ({cfg.final_top})")
    p.add_argument("--finetune-epochs", type=int, default=cfg.finetune.epochs,
                   help=f"masked fine-tuning epochs per final plan ({cfg.finetune.epochs}; cosine learning rate "
                        f"from {cfg.finetune.lr:g})")
    p.add_argument("--train-epochs", type=int, default=spec.train_epochs,
                   help=f"epochs when a checkpoint must be trained ({spec.train_epochs})")
    p.add_argument("--bench-runs", type=int, default=ev.bench.min_runs,
                   help=f"timed runs per candidate measurement (default {ev.bench.min_runs}; final models use "
                        f"{ev.final_bench.min_runs} in each of their rounds)")
    p.add_argument("--recover-steps", type=int, default=ev.recover_steps,
                   help=f"distillation steps each candidate gets before its accuracy is taken (default "
                        f"{ev.recover_steps})")
    p.add_argument("--precision", choices=choices(Precision), default=cfg.precision,
                   help=f"int8: quantize every measured candidate (PT2E, XNNPACK) and reward its int8 accuracy and "
                        f"latency; targets are of the dense int8 model (default {cfg.precision})")
    p.add_argument("--calibration-images", type=int, default=ev.calibration_images,
                   help=f"int8: training images each candidate is calibrated on (default {ev.calibration_images})")
    p.add_argument("--strategy", choices=choices(Strategy), default=cfg.strategy,
                   help="how plans are proposed: ppo, the GNN policy trained on the rewards; random, plans of the "
                        "same calibrated prior (a baseline); evolution, aging evolution from that prior with plans "
                        f"projected into the target band like PPO's (the baseline to beat) (default {cfg.strategy})")
    p.add_argument("--policy", dest="policy_file",
                   help="start from a trained policy.pt (any model size; --strategy ppo only)")
    p.add_argument("--dyna", type=int, default=cfg.ppo.dyna, metavar="N",
                   help="--strategy ppo: between two real rollouts, also train on N imagined plans per real one, "
                        "rewarded by a surrogate fitted on the plans evaluated so far (accuracy) and the cost model "
                        f"(latency); 0 turns it off (default {cfg.ppo.dyna}; see the README's Search section)")
    p.add_argument("--screen", type=int, default=cfg.ppo.screen, metavar="K",
                   help="--strategy ppo: evaluate, at each step, the best of K plans drawn from the policy, judged by "
                        "a cheap proxy of their accuracy (masked, BatchNorm recalibrated, no recovery; 0.35-0.45 s a "
                        "plan for ResNet-20, 1.2-1.3 s for MobileNetV2) and the cost model; 0 or 1 turns it off (default "
                        f"{cfg.ppo.screen}; see the README's Search section)")
    p.add_argument("--proxy-plans", type=int, default=cfg.ppo.proxy_plans, metavar="N",
                   help="--strategy ppo: before the first real candidate, train the policy on N plans drawn from it and "
                        "rewarded by the same proxy (no budget spent: ~0.4 s a plan for ResNet-20); 0 turns it off "
                        f"(default {cfg.ppo.proxy_plans}; see the README's Search section)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or finished run (its config is reused)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="score and export candidates as Ray tasks, as many at once as the cluster has CPUs: local:N "
                        "(a private Ray with N workers here), auto (the cluster `ray start` joined), HEAD:6379 or "
                        "ray://HEAD:10001; needs autosculpt[cluster] (default: in this process)")
    p.add_argument("--seed", type=int, default=cfg.seed)
    p.add_argument("--out", default=None, help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> SearchConfig:
    """SearchConfig from the parsed flags."""
    from dataclasses import replace

    from host.data import default_channels
    from host.devices.policy import BenchPolicy
    from host.errors import ConfigError
    from host.models.external import parse_model_args
    from host.search.config import EvalConfig, ModelSpec, SearchConfig

    if args.bench_runs < 1:
        raise ConfigError(f"--bench-runs {args.bench_runs} must be at least 1", hint="e.g. --bench-runs 20")
    if args.dyna < 0:
        raise ConfigError(f"--dyna {args.dyna} must be 0 (off) or more", hint="e.g. --dyna 8")
    if args.dyna and args.strategy != "ppo":
        raise ConfigError(f"--dyna trains the PPO policy; --strategy {args.strategy} has none",
                          hint="use --dyna with --strategy ppo, or leave it out")
    if args.screen < 0:
        raise ConfigError(f"--screen {args.screen} must be 0 (off) or more", hint="e.g. --screen 8")
    if args.screen > 1 and args.strategy != "ppo":
        raise ConfigError(f"--screen chooses among the PPO policy's plans; --strategy {args.strategy} has none",
                          hint="use --screen with --strategy ppo, or leave it out")
    if args.proxy_plans < 0:
        raise ConfigError(f"--proxy-plans {args.proxy_plans} must be 0 (off) or more", hint="e.g. --proxy-plans 256")
    if args.proxy_plans and args.strategy != "ppo":
        raise ConfigError(f"--proxy-plans trains the PPO policy; --strategy {args.strategy} has none",
                          hint="use --proxy-plans with --strategy ppo, or leave it out")
    spec = ModelSpec(
        model=args.model, data=args.data, image_size=args.image_size, width=args.width,
        in_channels=args.channels or default_channels(args.data),
        data_limit=args.data_limit, data_root=args.data_root, checkpoint=args.checkpoint,
        train_epochs=args.train_epochs, model_args=parse_model_args(args.model_args),
    )
    base = SearchConfig()
    return replace(
        base,
        out=Path(args.out or DEFAULT_OUT),
        model=spec,
        devices=tuple(args.devices or (() if args.device_pools else ("local",))),
        device_pools=tuple(args.device_pools or ()),
        fleet=str(Path(args.fleet).resolve()) if args.fleet else None,
        budget=base.budget if args.budget is None else args.budget,
        objective=args.objective,
        target_flops=args.target_flops,
        target=args.target or (base.target if ObjectiveName(args.objective).measured else None),
        constraint=args.constraint,
        aggregate=args.aggregate,
        seed=args.seed,
        policy_file=args.policy_file,
        strategy=args.strategy,
        ppo=replace(base.ppo, dyna=args.dyna, screen=args.screen, proxy_plans=args.proxy_plans),
        final_top=args.final_top,
        precision=args.precision,
        finetune=replace(base.finetune, epochs=args.finetune_epochs),
        evaluation=replace(EvalConfig(), bench=BenchPolicy.search(runs=args.bench_runs),
                           recover_steps=args.recover_steps, calibration_images=args.calibration_images),
    )


def run(args: argparse.Namespace) -> int:
    from host.search.runner import SearchRunner

    with _Display(enabled=not args.json) as display:
        if args.resume:
            runner = SearchRunner.resume(Path(args.resume), progress=display.update, budget=args.budget,
                                         ray=args.ray)
        else:
            runner = SearchRunner.start(build_config(args), progress=display.update, ray=args.ray)
        try:
            result = runner.run()
        except KeyboardInterrupt:
            print(f"\ninterrupted: resume with  sculpt-host search --resume {runner.run_dir}", file=sys.stderr)
            raise
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        _print_human(result, runner.run_dir)
    return 0


def _print_human(result: RunSummary, run_dir: Path) -> None:
    dense = result.dense
    print(f"{result.model} on {result.dataset}: objective {result.objective}, target {result.target}")
    print(f"evaluated {result.candidates_evaluated} candidates, {result.measurements_taken} device measurements,"
          f" {result.seconds:.0f} s")
    if result.invalid:
        print(f"{len(result.invalid)} plan(s) could not be built and were skipped; reasons in "
              f"{run_dir / 'report.md'}")

    def line(m: ModelFigures) -> str:
        cut = 1 - m.macs / dense.macs if dense.macs else 0.0
        lat = ", ".join(f"{d} {ms:.3f} ms ({dense.latency_ms[d] / ms:.2f}x)" for d, ms in m.latency_ms.items()
                        if ms > 0 and d in dense.latency_ms)
        energy = "".join(f", {d} {mj:.3f} mJ ({dense.energy_mj[d] / mj:.2f}x less)" for d, mj in m.energy_mj.items()
                         if mj and mj > 0 and dense.energy_mj.get(d))
        test = "" if m.test_accuracy is None else f" test {100 * m.test_accuracy:.2f}%"
        return f"  {m.name:<12} val {100 * m.val_accuracy:.2f}%{test}  MAC cut {100 * cut:.1f}%  {lat}{energy}"

    int8 = result.precision == Precision.INT8
    print(line(dense) + ("  (int8)" if int8 else ""))
    for m in result.finals:
        print(line(m) + ("  (int8)" if int8 else "") + ("  (target missed)" if m.target_met is False else ""))
    if result.fp32_twins:
        reference = result.fp32_twins[0].latency_ms
        print("fp32 twins (speed-ups against dense fp32):")
        for m in result.fp32_twins:
            lat = ", ".join(f"{d} {ms:.3f} ms ({reference[d] / ms:.2f}x)" for d, ms in m.latency_ms.items()
                            if ms > 0 and d in reference)
            test = "" if m.test_accuracy is None else f" test {100 * m.test_accuracy:.2f}%"
            print(f"  {m.name:<12} val {100 * m.val_accuracy:.2f}%{test}  {lat}  (fp32)")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    print(f"report: {run_dir / 'report.md'}")
    if result.finals and int8:
        print(f"deploy: {run_dir / 'final-1-int8.pte'} (feed it as {run_dir / 'final-1-int8.json'} says); fp32: "
              f"{run_dir / 'final-1.pte'}; int8 .tflite: sculpt-host export --from-run {run_dir} --format tflite "
              "--quantize")
    elif result.finals:
        print(f"deploy: {run_dir / 'final-1.pte'} (feed it as {run_dir / 'final-1.json'} says); other formats: "
              f"sculpt-host export --from-run {run_dir} --format tflite")


class _Display:
    """Search progress on stderr. On a terminal: a rich progress bar per stage (stage, candidates done, best
    reward so far, ETA). Piped, in CI or into a file: plain ``progress:`` lines, one when the stage or the
    count changes, at most one per ``PLAIN_INTERVAL_S`` within a stage (its last count always shows)."""

    PLAIN_INTERVAL_S = 5.0

    def __init__(self, enabled: bool, live: bool | None = None, clock: Callable[[], float] | None = None) -> None:
        """``live``: rich bars (default: when stderr is a terminal); ``clock``: seconds, time.monotonic by default."""
        import time

        from host.quiet import stderr_is_terminal

        self.enabled = enabled
        self.live = stderr_is_terminal() if live is None else live
        self._clock = clock or time.monotonic
        self._progress = None
        self._tasks: dict[str, TaskID] = {}
        self._started = self._clock()
        self._shown: tuple[str, int] | None = None  # (stage, done) of the last plain line
        self._shown_at = float("-inf")

    def __enter__(self) -> _Display:
        if self.enabled and self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]:<8}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._progress.__enter__()
        return self

    def update(self, p: Progress) -> None:
        if not self.enabled:
            return
        info = p.message
        if p.best is not None:
            info = f"best reward {p.best.reward:.4f} (val {100 * p.best.accuracy:.1f}%)"
        if self._progress is None:
            self._plain(p, info)
            return
        task = self._tasks.get(p.stage)
        if task is None:
            task = self._progress.add_task(p.stage, total=max(p.total, 1), stage=p.stage, info=info)
            self._tasks[p.stage] = task
        self._progress.update(task, completed=p.done, total=max(p.total, 1), info=info)

    def _plain(self, p: Progress, info: str) -> None:
        now = self._clock()
        key = (p.stage, p.done)
        if key == self._shown:
            return
        same_stage = self._shown is not None and self._shown[0] == p.stage
        if same_stage and p.done < p.total and now - self._shown_at < self.PLAIN_INTERVAL_S:
            return
        self._shown, self._shown_at = key, now
        print(f"progress: {p.stage} {p.done}/{p.total} {info} [{now - self._started:.0f} s]", file=sys.stderr,
              flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
