"""Does the device latency model carry to another model? (issue 17, host.search.devicemodel)

1. A search of --first (default ResNet-20) on the local agent, with an empty device-model store: it fills
   the store with its measured candidates.
2. For each model of --second (default ResNet-56 and MobileNetV2), two searches with the same seed, budget
   and target: "warm" on a copy of that store, "cold" on an empty one.

For each --second model the table gives, over the warm run's measured search candidates, how far each
candidate's latency was from what was predicted before it was measured (the search's own figure: the
candidate's ratio to the dense model measured right after it, times the dense figure), by

  device model        the persisted model fitted on the store (step 1), the warm run's own candidates added
                      as they came: what the warm search logs as "device latency model"
  cost model, warm    the run's cost model as the warm search had it: its prior moved onto the device model,
                      refitted on the run's measured candidates before this one (replayed from the journal)
  cost model, cold    the same cost model from the MAC-proportional prior (what a search without a store has)

and, per run, the device measurements it took: the journal rows that were measured (dense, floor, search and
final rows) and every benchmark run on the board (those rows, each candidate's dense pair, the repeats that
confirm a plan that meets the target, the final stage's side-by-side confirmation and its dense/final rounds),
and its final test accuracy. The device model's row counts the warm run's candidates it predicted and that were
then measured: its search candidates, or, when it is trusted under the hard target and the search measures
nothing, the plans the final stage confirms side by side with dense. Issue 17's bar: +-10% for at least 90% of the candidates from the first one, and at least
2x fewer device measurements than the cold run for a final model within 0.5 points.

    .venv/bin/python benchmarks/latency_model_bench.py [--first resnet20] [--second resnet56,mobilenetv2]
        [--budget 8] [--first-budget 8] [--target-latency 0.5x] [--image-size 32] [--out runs/latency_model_bench]

A run that finished under --out is read, not run again. About 55 min with the defaults here (ResNet-20 4 min,
each ResNet-56 and MobileNetV2 search 8-16 min). The dense models train for --train-epochs on --data-limit
digits only (30-45% accuracy for the ResNets at the defaults): enough to rank latency predictions, not to
compare final accuracies; raise both for that.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run(config, out: Path, store: Path) -> float:
    """The search of ``config`` into ``out`` learning into (and warm-starting from) ``store``; its seconds."""
    from host.search.journal import JOURNAL_NAME
    from host.search.runner import SearchRunner

    if (out / "result.json").exists():
        return 0.0
    os.environ["AUTOSCULPT_DEVICE_MODELS"] = str(store)
    start = time.perf_counter()
    runner = SearchRunner.resume(out) if (out / JOURNAL_NAME).exists() else SearchRunner.start(replace(config, out=out))
    runner.run()
    return time.perf_counter() - start


def store_samples(store: Path, run_dir: Path) -> list:
    """The store's samples written by ``run_dir``'s search candidates (they carry a prediction)."""
    from host.search.devicemodel import Sample

    samples = []
    for path in store.glob("*/*.jsonl"):
        import json

        for line in path.read_text().splitlines():
            sample = Sample.from_json(json.loads(line))
            if sample.run == str(run_dir) and sample.predicted_ms is not None:
                samples.append(sample)
    return samples


def replay_cost_model(run_dir: Path, space, warm: bool) -> list[tuple[float, float]]:
    """(predicted, measured) ratio of each measured search candidate of ``run_dir``, the prediction by the cost
    model fitted on the measured candidates before it (from the journal's prior when ``warm``, else from MACs)."""
    from host.kinds import Phase
    from host.search.costmodel import CostModel
    from host.search.journal import Journal

    journal = Journal.open(run_dir)
    keep = space.vocab[space.keep_index]

    def choices(record):
        import numpy as np

        return np.array([space.vocab.index(record.plan.choices.get(layer, keep)) for layer in space.layer_names])

    def ratio(record) -> float | None:
        m = record.measurement or {}
        ratios = [s.p50_ms / s.dense_p50_ms for s in m.values() if s.dense_p50_ms]
        return max(ratios) if ratios else None

    model = CostModel.from_space(space)
    prior = (journal.get_value("cost_prior") or {}).get("weights") if warm else None
    if prior is not None:
        model.restore_prior(prior)
    seen, pairs = [], []
    for record in journal.candidates():
        if record.phase in (Phase.DENSE, Phase.FINAL) or record.reused or not record.valid:
            continue
        measured = ratio(record)
        if measured is None:
            continue
        if record.phase == Phase.SEARCH:
            model.fit(seen)
            pairs.append((model.predict(choices(record)), measured))
        seen.append((choices(record), measured))
    return pairs


def device_work(run_dir: Path) -> tuple[int, int | None]:
    """(journal rows that were measured, benchmarks run on the board): the second counts what the rows do not,
    each candidate's dense pair and the final stage's side-by-side rounds (None for a run from before it was
    kept)."""
    from host.search.journal import Journal
    from host.search.measurer import BENCHMARKS_KEY

    journal = Journal.open(run_dir)
    return (sum(1 for r in journal.candidates() if r.measurement and not r.reused),
            journal.get_value(BENCHMARKS_KEY))


def trust(run_dir: Path) -> str:
    """Whether the run's device latency model was trusted to stand in for the board when its search began."""
    from host.search.journal import Journal

    value = Journal.open(run_dir).get_value("latency_model_trust")
    if not value:
        return "-"
    return "trusted" if value.get("trusted") else f"not trusted: {value.get('why', '')}"


def final_accuracy(run_dir: Path) -> float | None:
    import json

    result = json.loads((run_dir / "result.json").read_text())
    finals = result.get("finals") or []
    return finals[0].get("test_accuracy") if finals else None


def stats(errors: list[float]) -> str:
    if not errors:
        return "| - | - | - |"
    within = sum(e <= 0.10 for e in errors) / len(errors)
    return f"| {len(errors)} | {100 * within:.0f}% | {100 * statistics.median(errors):.1f}% |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--first", default="resnet20")
    parser.add_argument("--second", default="resnet56,mobilenetv2")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--first-budget", type=int, default=None,
                        help="budget of the search that fills the store (default --budget): how much the board has seen")
    parser.add_argument("--target-latency", default="0.5x")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data-limit", type=int, default=2000)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "latency_model_bench")
    args = parser.parse_args(argv)

    import torch

    from host.models.loader import load_model
    from host.search.config import ModelSpec, SearchConfig
    from host.search.space import SearchSpace

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    def config(model: str, budget: int | None = None) -> SearchConfig:
        return SearchConfig(budget=budget or args.budget, final_top=1, seed=args.seed, export_tflite=False, objective="latency",
                            target=args.target_latency, devices=("local",),
                            model=ModelSpec(model=model, image_size=args.image_size, data_limit=args.data_limit,
                                            train_epochs=args.train_epochs))

    first_store = out / "store-first"
    print(f"{args.first}: filling the store", file=sys.stderr, flush=True)
    took = run(config(args.first, args.first_budget), out / args.first, first_store)
    print(f"  {took:.0f} s", file=sys.stderr, flush=True)
    lines = [f"target {args.target_latency}, budget {args.budget}, {args.image_size} px MNIST, seed {args.seed}; "
             f"store filled by one {args.first} search of budget {args.first_budget or args.budget} ({len(store_samples(first_store, out / args.first))} "
             "predicted candidates of its own)", ""]
    runs = []
    for model in [m.strip() for m in args.second.split(",") if m.strip()]:
        warm_store = out / f"store-{model}-warm"
        if not (out / model / "warm" / "result.json").exists():
            shutil.rmtree(warm_store, ignore_errors=True)
            shutil.copytree(first_store, warm_store)
        for kind, store in (("warm", warm_store), ("cold", out / f"store-{model}-cold")):
            print(f"{model}: {kind} search", file=sys.stderr, flush=True)
            took = run(config(model), out / model / kind, store)
            print(f"  {took:.0f} s", file=sys.stderr, flush=True)
        space = SearchSpace(load_model(model, in_channels=1, image_size=args.image_size),
                            torch.randn(1, 1, args.image_size, args.image_size))
        device = [abs(s.predicted_ms - s.ms) / s.ms for s in store_samples(warm_store, out / model / "warm")]
        warm = [abs(p - m) / m for p, m in replay_cost_model(out / model / "warm", space, warm=True)]
        cold = [abs(p - m) / m for p, m in replay_cost_model(out / model / "cold", space, warm=False)]
        lines += [f"### {model}", "", "| predictor | candidates | within +-10% | median error |", "|---|---|---|---|",
                  f"| device model (store of {args.first}), warm run {stats(device)}",
                  f"| cost model from the device model's prior, warm run {stats(warm)}",
                  f"| cost model from MACs, cold run {stats(cold)}", ""]
        runs += [(model, kind, *device_work(out / model / kind), final_accuracy(out / model / kind),
                  trust(out / model / kind)) for kind in ("warm", "cold")]
    lines += ["| model | run | measured rows | benchmarks run on the board | final test accuracy | device model at the "
              "start |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {k} | {n} | {'-' if b is None else b} | {'-' if a is None else f'{100 * a:.2f}%'} | {t} |"
              for m, k, n, b, a, t in runs]
    text = "\n".join(lines)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
