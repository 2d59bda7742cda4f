"""Scale benchmark (issue 16): candidates per minute with 1 vs 2 Ray workers, measured side by side, and a
projection of a large search from the per-stage costs measured here.

Part 1, scoring on a cluster. ResNet-20 on MNIST-5k at 16 px (checkpoint trained and cached on first use), the
search's own candidate scoring (realization check, masks, 16 recovery steps, BatchNorm recalibration, validation
accuracy, exact MACs) on the same random plans, through ``CandidateEvaluator.evaluate_many`` and a private Ray
instance with 2 CPUs: "1 worker" submits one plan at a time, "2 workers" two at a time (what ``--ray local:2``
does). In-process scoring (no Ray) is the reference row. Rounds alternate (in-process, 1, 2, in-process, 1,
2, ...) so that load and frequency drift hit every row alike; the speed-up is the median of the per-round ratios.

Part 2, projection. Per-stage costs measured here (a plan's scoring on one worker, its export, its benchmark on
the local agent with the search policy, the dense pair after it) drive a model of today's scheduler: PPO proposes
W plans at once (W = the cluster's CPUs), they are scored side by side, the ones worth measuring are exported
side by side on the workers, and the driver measures them one after another on the board(s). The table projects
the wall time of a budget-500 search for several worker and board counts, with separate boards (measured one at a
time) and with the boards as one ``--device-pool`` (measured side by side), and says which part bounds it.

Part 3, boards as a pool. Two real agents, each pinned to its own core (``taskset``); the same artifacts (ResNet-20
plans at 64 px, where the benchmark dominates) each measured with its dense pair on a pool of 1 vs 2 of them, as
many at once as there are boards (what the search does with ``--device-pool``), interleaved rounds.

    .venv/bin/python benchmarks/scale_bench.py [--plans 8] [--rounds 2] [--measured-share 0.5] [--only pool]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _setup(cache: Path):
    import torch

    from host.data import load_dataset
    from host.models.loader import load_model
    from host.models.train import TrainConfig, get_or_train_checkpoint
    from host.search.config import EvalConfig
    from host.search.finetune import recalibrate_bn
    from host.search.scorer import EvalData
    from host.search.space import SearchSpace

    splits = load_dataset("mnist", image_size=16, channels=1, seed=0)
    path = get_or_train_checkpoint("resnet20", "mnist", cache_dir=cache, config=TrainConfig(epochs=12, seed=0),
                                   image_size=16, in_channels=1, num_classes=splits.num_classes)
    torch.manual_seed(0)
    model = load_model("resnet20", checkpoint=path, num_classes=splits.num_classes, in_channels=1,
                       image_size=16).eval()
    ev = EvalConfig()
    data = EvalData.from_splits(splits, ev.bn_batches, ev.batch_size, ev.val_limit, 0, ev.recover_steps,
                                ev.recover_batch_size)
    recalibrate_bn(model, data.bn_batches, num_batches=len(data.bn_batches))
    return model, data, SearchSpace(model, data.example_input)


def _plans(space, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        choices = space.dense_choices()
        for i, valid in enumerate(space.choice_mask):
            if rng.random() < 0.6:
                choices[i] = rng.choice(np.flatnonzero(valid))
        if tuple(choices) not in seen:
            seen.add(tuple(choices))
            out.append(choices)
    return out


def _evaluator(model, space, data, run_dir: Path, devices=()):
    from host.devices.results import BenchSpec
    from host.search.candidate import CandidateEvaluator
    from host.search.journal import Journal
    from host.search.reward import Objective

    journal = Journal.create(run_dir, {})
    return CandidateEvaluator(model, space, data, journal, Objective("flops", target_flops=0.5), list(devices),
                              BenchSpec(threads=1))


def _score_round(model, space, data, plans, executor, width: int, root: Path) -> float:
    """Seconds to score every plan, ``width`` at a time on ``executor`` (None: in this process)."""
    import torch

    torch.set_num_threads(1)
    evaluator = _evaluator(model, space, data, root / f"run-{time.monotonic_ns()}")
    try:
        evaluator.evaluate_dense()
        start = time.perf_counter()
        for i in range(0, len(plans), width):
            evaluator.evaluate_many(plans[i:i + width], executor=executor)
        seconds = time.perf_counter() - start
        assert evaluator.journal.count("search", evaluated_only=True) == len(plans)
        return seconds
    finally:
        evaluator.close()
        evaluator.journal.close()


def _stage_costs(model, space, data, plans, root: Path) -> dict[str, float]:
    """Median seconds of one plan's scoring, export, benchmark (search policy) and dense pair on the local agent."""
    from host.devices.policy import BenchPolicy
    from host.devices.results import BenchSpec
    from host.search.devices import measure, open_devices
    from host.search.parallel import export_plan, score_plan

    score, export, bench = [], [], []
    spec = BenchSpec(threads=1, policy=BenchPolicy.search())
    with open_devices(("local",), None) as devices:
        scorer = _evaluator(model, space, data, root / "costs").scorer
        for i, choices in enumerate(plans[:4]):
            from host.search.candidate import candidate_plan

            chosen = candidate_plan(space, choices)
            score.append(score_plan(scorer, chosen.plan, chosen.choices).seconds)
            t = time.perf_counter()
            exported = export_plan(scorer, chosen.plan, chosen.choices)
            export.append(time.perf_counter() - t)
            artifact = exported.write(root / f"cost-{i}.pte")
            t = time.perf_counter()
            measure(devices[0], artifact.path, spec)
            bench.append(time.perf_counter() - t)
    med = statistics.median
    return {"score": med(score), "export": med(export), "measure": med(bench), "dense_pair": med(bench)}


def _project(costs: dict[str, float], workers: int, boards: int, budget: int, share: float,
             boards_in_parallel: bool) -> tuple[float, str]:
    """Projected wall seconds of ``budget`` candidates and what bounds it, for the scheduler of
    ``CandidateEvaluator.evaluate_many``: PPO proposes ``workers`` plans at once; they are scored side by side
    (a batch ends with its slowest plan: recovery steps cost about the same for every plan, +-20%); the share
    worth measuring is exported on the workers, side by side; the driver measures each artifact and its dense
    pair, one at a time (``boards_in_parallel``: on as many boards at once as there are)."""
    batches = math.ceil(budget / workers)
    score = costs["score"] * (1.2 if workers > 1 else 1.0)
    measured = max(1, round(workers * share))
    export = costs["export"] * math.ceil(measured / workers)
    lanes = min(boards, measured) if boards_in_parallel else 1
    drive = math.ceil(measured / lanes) * (costs["measure"] + costs["dense_pair"])
    wall = batches * (score + export + drive)
    parts = {"scoring (workers)": score, "export (workers)": export,
             ("boards" if boards_in_parallel else "driver measuring one at a time"): drive}
    return wall, max(parts, key=parts.get)


@contextlib.contextmanager
def _agents_pinned(cores: list[int]):
    """One real ``sculpt-agent serve`` per core, pinned there with ``taskset`` (its benchmark workers inherit
    the pinning); yields their ``grpc://`` addresses."""
    procs, addresses = [], []
    try:
        for core in cores:
            store = tempfile.mkdtemp(prefix=f"scale-agent{core}-")
            proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "device_agent.cli", "serve",
                                     "--port", "0", "--store", store, "--ephemeral-store"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(proc)
            line = proc.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError(f"agent on core {core} did not start: {line!r}")
            addresses.append("grpc://" + line.split()[-1])
        yield addresses
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def _pool_round(addresses: list[str], artifacts: list[Path], dense: Path) -> float:
    """Seconds to measure every artifact with its dense pair on a pool of ``addresses``, as many at once as
    there are boards (the search's pooled measurement: ``Measurer.measure_with_dense`` in one thread per board)."""
    from concurrent.futures import ThreadPoolExecutor

    from host.devices.policy import BenchPolicy
    from host.devices.results import BenchSpec
    from host.export import Artifact
    from host.search.devices import PoolSpec, open_devices
    from host.search.measurer import Measurer

    spec = PoolSpec("pool", tuple(addresses))
    with open_devices((), None, [spec]) as devices:
        dense_artifact = Artifact(path=dense, kind="pte", sha256="dense", size_bytes=0, max_abs_err=0.0,
                                  input_shapes=())
        # measure_with_dense touches no journal (the cache is the caller's): none is given
        measurer = Measurer(devices, BenchSpec(threads=1, policy=BenchPolicy.search()), None, "latency",
                            lambda: dense_artifact)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(addresses)) as threads:
            list(threads.map(measurer.measure_with_dense, artifacts))
        return time.perf_counter() - start


def _pool_part(rounds: int, image_size: int, count: int) -> list[str]:
    """Part 3: measurements per minute on a pool of 1 vs 2 agents, each pinned to its own core."""
    import torch

    from host.export import export_pte
    from host.models.loader import load_model
    from host.search.scorer import EvalData, PlanScorer
    from host.search.space import SearchSpace

    torch.manual_seed(0)
    model = load_model("resnet20", num_classes=10, in_channels=3, image_size=image_size).eval()
    x = torch.randn(1, 3, image_size, image_size)
    space = SearchSpace(model, x)
    scorer = PlanScorer(model, EvalData(example_input=x, bn_batches=[], val_batches=[]))
    root = Path(tempfile.mkdtemp(prefix="scale-pool-"))
    dense = export_pte(model, (x,), root / "dense-reference.pte").path
    artifacts = []
    from host.search.candidate import candidate_plan

    for i, choices in enumerate(_plans(space, count, seed=1)):
        chosen = candidate_plan(space, choices)
        artifacts.append(scorer.export(scorer.realize_checked(chosen.plan), root / f"plan{i}.pte").path)
    times: dict[int, list[float]] = {1: [], 2: []}
    with _agents_pinned([0, 1]) as addresses:
        _pool_round(addresses, artifacts[:2], dense)  # warm-up: each agent loads the runtime once
        for r in range(rounds):
            for boards in (1, 2):
                times[boards].append(_pool_round(addresses[:boards], artifacts, dense))
            print(f"pool round {r + 1}: 1 board {times[1][-1]:.1f} s, 2 boards {times[2][-1]:.1f} s", flush=True)
    n = 2 * len(artifacts)  # each artifact and its dense pair
    lines = [f"\nPart 3: {len(artifacts)} ResNet-20 plans at {image_size} px, each with its dense pair ({n} benchmarks, "
             f"search policy), on a pool of agents each pinned to its own core, {rounds} interleaved rounds",
             "| pool | median s | measurements / min | speed-up vs 1 board (per round) |", "|---|---|---|---|"]
    for boards, secs in times.items():
        ratios = [a / b for a, b in zip(times[1], secs, strict=True)]
        lines.append(f"| {boards} board{'s' if boards > 1 else ''} | {statistics.median(secs):.1f} | "
                     f"{60 * n / statistics.median(secs):.1f} | {statistics.median(ratios):.2f}x "
                     f"({', '.join(f'{x:.2f}' for x in ratios)}) |")
    return lines


def _journal_costs(run_dir: Path) -> tuple[dict[str, float], float]:
    """Per-stage costs (median seconds) and the measured share from a finished search's journal: the stage seconds
    each candidate recorded (journal schema 4: score, export, measure with its dense pair and confirmations;
    the measure figure stands for the benchmark and its pair, half each)."""
    from host.search.journal import Journal

    journal = Journal.open(run_dir)
    try:
        rows = [r for r in journal.candidates("search") if not r.reused and r.valid and r.stage_seconds]
    finally:
        journal.close()
    measured = [r.stage_seconds for r in rows if "measure" in r.stage_seconds]
    if not rows or not measured:
        raise SystemExit(f"{run_dir}: no search candidates with recorded stage seconds, or none measured "
                         "(journals written before schema 4 did not record them)")
    med = statistics.median
    measure = med(s["measure"] for s in measured)
    return ({"score": med(r.stage_seconds["score"] for r in rows), "export": med(s["export"] for s in measured),
             "measure": measure / 2, "dense_pair": measure / 2}, len(measured) / len(rows))


def _print_projection(costs: dict[str, float], share: float) -> None:
    print(f"projected wall time of a budget-500 search, {share:.0%} of candidates measured")
    print("| workers | boards | separate devices (one at a time) | bound | one --device-pool (side by side) | bound |")
    print("|---|---|---|---|---|---|")
    for workers, boards in ((1, 1), (2, 1), (8, 4), (16, 8), (32, 16), (64, 16), (32, 32)):
        today, b1 = _project(costs, workers, boards, 500, share, False)
        pool, b2 = _project(costs, workers, boards, 500, share, True)
        print(f"| {workers} | {boards} | {today / 60:.1f} min | {b1} | {pool / 60:.1f} min | {b2} |")
    # where it saturates: 16 boards as a pool, workers doubled until the projected wall time gains < 10%
    workers, wall = 1, _project(costs, 1, 16, 500, share, True)[0]
    while workers < 4096:
        nxt = _project(costs, 2 * workers, 16, 500, share, True)[0]
        if nxt > 0.9 * wall:
            break
        workers, wall = 2 * workers, nxt
    bound = _project(costs, workers, 16, 500, share, True)[1]
    print(f"\nwith 16 boards as a pool, more workers stop paying at about {workers} workers "
          f"({wall / 60:.1f} min; then bound by {bound}, and by the driver's own per-candidate work, not modelled)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", type=int, default=8, help="plans scored per round and row (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and not counted: Ray starts its worker processes, which import "
                             "torch and the project once, on first use (default 1)")
    parser.add_argument("--measured-share", type=float, default=0.5,
                        help="share of candidates worth measuring, for the projection (default 0.5)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "autosculpt" / "checkpoints"))
    parser.add_argument("--only", choices=("scoring", "pool"), help="run one part (default: all)")
    parser.add_argument("--journal", metavar="RUN_DIR",
                        help="project from this finished search's journal (its candidates' recorded seconds and "
                             "measured share) instead of the costs measured here; prints only the projection")
    parser.add_argument("--pool-image-size", type=int, default=64,
                        help="input size of the pool part's model: large enough that its benchmark dominates")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.only == "pool":
        print("\n".join(_pool_part(args.rounds, args.pool_image_size, args.plans)))
        return 0
    if args.journal:
        costs, share = _journal_costs(Path(args.journal))
        print(f"costs from {args.journal} (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items())
              + f"; {share:.0%} of candidates measured")
        _print_projection(costs, share)
        return 0

    from host.cluster.executor import ClusterSpec, RayExecutor

    model, data, space = _setup(Path(args.cache))
    plans = _plans(space, args.plans)
    executor = RayExecutor(ClusterSpec("local:2"))
    rows: dict[str, list[float]] = {"in-process": [], "ray, 1 worker": [], "ray, 2 workers": []}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        root = Path(tmp)
        try:
            for r in range(args.warmup + args.rounds):
                rows["in-process"].append(_score_round(model, space, data, plans, None, 1, root))
                for width, name in ((1, "ray, 1 worker"), (2, "ray, 2 workers")):
                    executor.parallelism = width
                    rows[name].append(_score_round(model, space, data, plans, executor, width, root))
                print(f"round {r + 1}{' (warm-up)' if r < args.warmup else ''}: "
                      + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()), flush=True)
            rows = {k: v[args.warmup:] for k, v in rows.items()}
        finally:
            executor.close()
        costs = _stage_costs(model, space, data, plans, root)

    n = args.plans
    print(f"\nPart 1: scoring {n} ResNet-20 plans (MNIST 16 px, 16 recovery steps), {args.rounds} interleaved rounds")
    print("| row | median s | candidates / min | speed-up vs ray 1 worker (median of rounds) |")
    print("|---|---|---|---|")
    base = rows["ray, 1 worker"]
    for name, secs in rows.items():
        ratios = [b / s for b, s in zip(base, secs, strict=True)]
        print(f"| {name} | {statistics.median(secs):.1f} | {60 * n / statistics.median(secs):.1f} | "
              f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) |")

    print("\nPart 2: per-stage costs measured here (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    _print_projection(costs, args.measured_share)
    if args.only is None:
        print("\n".join(_pool_part(args.rounds, args.pool_image_size, args.plans)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
