"""How well does the device latency model's fit carry from some models' plans to another model's? (issue 17)

For each model of --models, its floor plan (every layer's most aggressive choice) and --plans - 1 random plans of
its search space (each layer takes a random valid choice with probability 0.3-1, else stays dense) are realized, exported to .pte and timed in process with the ExecuTorch
runtime, interleaved with the model's dense program (--rounds rounds of the fastest of 3 calls; a plan's figure is
its median ratio to dense times the dense median, as a search records it), on one thread as the local agent
runs them (its worker is pinned to one core; --threads to change it). Then each model's plans are predicted
from the other models' measurements only, as a search predicts a candidate (its ratio to dense under the fitted
model, times the measured dense figure), by five fits of ``host.search.devicemodel``:

  tile 8, absolute rows     the fit before stop 40: relative errors only, GEMM work on 8-channel tiles
  tile 8 / 16, absolute     relative errors only, at one tile
  tile 8 / 16, ratio rows   relative errors and each plan's ratio to its dense model (the shipped fit, one tile)
  as shipped                ratio rows at the tile the store chooses (choose_tile)

and, as a second table, each model's plans from one other model's measurements (a store filled by one search).
A model whose kinds of GEMM the others never ran (MobileNetV2's depthwise convolutions, when only ResNets and
VGG were measured) is predicted but would not be trusted (DeviceLatencyModel.distrust).

    .venv/bin/python benchmarks/device_model_bench.py [--models resnet20,resnet56,vgg16,mobilenetv2] [--plans 14]
        [--image-size 32] [--rounds 15] [--out runs/device_model_bench.jsonl]

Measurements go to --out (one JSON line per plan) and are read back instead of measured again when it exists
(delete it to measure anew). About 12 minutes here with the defaults (ResNet-56's exports are most of it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from host.search.devicemodel import DeviceLatencyModel, Sample, choose_tile, fit_theta  # noqa: E402


def _fastest(method, x: torch.Tensor, calls: int = 3) -> float:
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter_ns()
        method.execute([x])
        best = min(best, (time.perf_counter_ns() - start) / 1e6)
    return best


def measure(models: list[str], plans: int, size: int, rounds: int, seed: int, threads: int, out: Path) -> None:
    """Append one JSON line per measured plan (and one per dense model) to ``out``."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    from host.export import export_pte
    from host.models.zoo import create_model
    from host.search.devicemodel import operator_features
    from host.search.space import SearchSpace
    from patterns import realize

    if threads:  # else the runtime's own pool
        torch.set_num_threads(threads)
        _unsafe_reset_threadpool(threads)
    runtime = Runtime.get()
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    rng = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(out, "a") as handle:
        for name in models:
            torch.manual_seed(seed)
            model = create_model(name, in_channels=1, image_size=size).eval()
            space = SearchSpace(model, x, name=name)
            dense_path = export_pte(model, (x,), Path(tmp) / f"{name}-dense.pte").path
            dense = runtime.load_program(dense_path).load_method("forward")
            for _ in range(20):
                dense.execute([x])
            dense_features = operator_features(model, x)
            dense_runs: list[float] = []
            done = 0
            while done < plans:
                if done == 0:  # the most aggressive plan, which every search measures first
                    choices = space.floor_choices()
                else:
                    share = rng.choice([0.3, 0.5, 0.7, 0.9, 1.0])
                    choices = np.array([rng.choice(list(np.flatnonzero(row))) if rng.random() < share
                                        else space.keep_index for row in space.choice_mask])
                try:
                    plan, names = space.decode(choices)
                    realized = realize(model, plan, x)
                    features = operator_features(realized, x)
                    path = export_pte(realized, (x,), Path(tmp) / f"{name}-{done}.pte").path
                except Exception as exc:  # noqa: BLE001 - a plan that does not realize is drawn again
                    print(f"[{name}] plan skipped: {type(exc).__name__}: {str(exc)[:100]}", file=sys.stderr)
                    continue
                method = runtime.load_program(path).load_method("forward")
                for _ in range(20):
                    method.execute([x])
                pairs = [(_fastest(dense, x), _fastest(method, x)) for _ in range(rounds)]
                dense_runs += [d for d, _ in pairs]
                row = {"model": name, "features": list(features), "dense_features": list(dense_features),
                       "ratio": statistics.median(p / d for d, p in pairs),
                       "dense_ms": statistics.median(d for d, _ in pairs),
                       "choices": sorted(set(names.values()))}
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                print(f"[{name}] plan {done}: {row['ratio']:.3f} of dense ({row['dense_ms']:.3f} ms)", file=sys.stderr,
                      flush=True)
                done += 1


def _groups(rows: list[dict]) -> dict[str, tuple[Sample, list[tuple[Sample, dict]]]]:
    """Per model: its dense sample and its plans' samples (the figure a search records), with their rows."""
    groups = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        dense_ms = statistics.median(r["dense_ms"] for r in mine)
        dense = Sample(tuple(mine[0]["dense_features"]), dense_ms, name, run=name)
        groups[name] = (dense, [(Sample(tuple(r["features"]), r["ratio"] * dense_ms, name, run=name), r) for r in mine])
    return groups


def _errors(train: list[Sample], held: tuple[Sample, list], tile: int | None, ratio_rows: bool) -> np.ndarray:
    """Relative errors of ``held``'s plans predicted from ``train`` (``tile`` None: the store as shipped)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = DeviceLatencyModel("bench", "fp32", root=Path(tmp))
        model.samples = list(train)
        if tile is None:
            model.fit()
        else:
            model.tile, model.theta = tile, fit_theta(train, tile, None if ratio_rows else 0.0)
        dense, plans = held  # a plan's prediction over its measured figure is its ratio's over the measured one
        return np.array([abs(model.predict_ratio(s.features, dense.features) / r["ratio"] - 1) for s, r in plans])


FITS = (("tile 8, absolute rows (before)", 8, False), ("tile 16, absolute rows", 16, False),
        ("tile 8, ratio rows", 8, True), ("tile 16, ratio rows", 16, True), ("as shipped (chosen tile)", None, True))


def _cell(errors: np.ndarray) -> str:
    return f"{np.mean(errors <= 0.10):.0%} / {100 * np.median(errors):.1f}%"


def report(rows: list[dict]) -> None:
    groups = _groups(rows)
    names = list(groups)

    def samples(models) -> list[Sample]:
        return [s for m in models for s in [groups[m][0], *(p for p, _ in groups[m][1])]]

    print("\nEach model's plans predicted from the OTHER models' measurements: share within +-10% / median error")
    print("| fit | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, tile, ratio_rows in FITS:
        cells = [_cell(_errors(samples([m for m in names if m != held]), groups[held], tile, ratio_rows))
                 for held in names]
        print(f"| {label} | " + " | ".join(cells) + " |")
    chosen = {held: choose_tile(samples([m for m in names if m != held])) for held in names}
    print("tile chosen by the store: " + ", ".join(f"without {m}: {t}" for m, t in chosen.items()))
    print("\nEach model's plans predicted from ONE other model's measurements (as shipped): within +-10% / median")
    print("| store filled by | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for source in names:
        cells = ["-" if held == source else _cell(_errors(samples([source]), groups[held], None, True))
                 for held in names]
        print(f"| {source} (tile {choose_tile(samples([source]))}) | " + " | ".join(cells) + " |")
    print(f"\n{len(rows)} plans; ratios measured in process (ExecuTorch/XNNPACK), interleaved with dense")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56,vgg16,mobilenetv2")
    parser.add_argument("--plans", type=int, default=14, help="random plans per model (default 14)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per plan (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="XNNPACK threads (default 1: the local agent pins its runtime worker to one core; 0 = "
                             "the runtime's default pool)")
    parser.add_argument("--out", type=Path, default=Path("runs/device_model_bench.jsonl"))
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if not args.out.exists():
        measure(models, args.plans, args.image_size, args.rounds, args.seed, args.threads, args.out)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["model"] in models]
    if len({r["model"] for r in rows}) < 2:
        raise SystemExit(f"{args.out} holds plans of fewer than 2 of {models}: delete it to measure again")
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
