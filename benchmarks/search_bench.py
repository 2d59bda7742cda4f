"""Search benchmark (issue 5 "done when"): one run, same candidate budget, ResNet-20 on MNIST-5k.

Rows:
  latency  our search with the measured-latency objective (balanced MnasNet-style constraint, target 0.6x dense):
           calibrated prior, family seeds, AMC-style projection onto the target band, GNN + PPO, online cost
           model deciding which candidates are worth exporting and measuring
  flops    the same search with the paper's reward (100*acc inside +-5 points of a 50% MAC cut, else acc-1);
           its projection targets the MAC cut
  random   plans drawn from the same calibrated prior as the untrained policy, same budget, same reward and
           evaluator as `latency`; no seeds, no projection, no learning
  no-learn ablation: `latency` with PPO's learning rate 0 (prior + seeds + projection + cost model, no learning)
  l1       uniform L1 channel pruning (torch-pruning), its per-layer ratio bisected until the MEASURED latency
           is closest to the latency row's
Every row is fine-tuned the same way (masked fine-tuning, distillation from dense), realized, exported to
.pte and measured on the local agent; the final latencies are re-measured side by side in interleaved
rounds. Selection uses the validation split only; the test split is reported, and the verdicts compare test
accuracy (each row's winner was picked on validation, so its validation figure is biased upwards).

    .venv/bin/python benchmarks/search_bench.py [--budget 32] [--target-latency 0.6x] [--out runs/search_bench]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path


def _search(base_config, name: str, out: Path, **changes):
    from host.search.runner import SearchRunner

    config = replace(base_config, out=out / name, **changes)
    start = time.perf_counter()
    result = SearchRunner.start(config).run()
    final = result["finals"][0] if result["finals"] else None
    return result, final, time.perf_counter() - start


def _uniform_l1(model, splits, target_ms: float, finetune, out: Path, bench_runs: int):
    """torch-pruning magnitude (L1) channel pruning, the same ratio in every layer, its per-layer ratio
    bisected until the MEASURED latency matches ``target_ms`` (the latency-objective result's)."""
    import torch_pruning as tp

    from host.export import export_pte
    from host.search.candidate import batches
    from host.search.devices import BenchSettings, measure, open_devices
    from host.search.finetune import accuracy, masked_finetune
    from patterns import count

    x_val, y_val = splits.val.tensors()
    example = x_val[:1]
    dense_macs = count(model, example).macs

    def pruned(ratio: float):
        m = copy.deepcopy(model)
        pruner = tp.pruner.MagnitudePruner(
            m, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=[m.fc], global_pruning=False,
        )
        pruner.step()
        return m, 1 - count(m, example).macs / dense_macs

    with open_devices(["local"]) as devices:
        def latency(m) -> float:
            artifact = export_pte(m, (example,), out / "l1-probe.pte")
            return measure(devices[0], Path(artifact.path), BenchSettings(5, 30, 0.3, 1))["p50_ms"]

        lo, hi = 0.0, 0.9
        probes = {}
        for _ in range(7):  # bisection on the per-layer ratio: more pruning -> lower latency
            mid = (lo + hi) / 2
            probes[mid] = latency(pruned(mid)[0])
            lo, hi = (mid, hi) if probes[mid] > target_ms else (lo, mid)
        ratio = min(probes, key=lambda r: abs(probes[r] - target_ms))  # the probe measured closest to the target
        m, cut = pruned(ratio)
        x_tr, y_tr = splits.train.tensors()
        # the same batches as the searched finals' fine-tuning (SearchConfig defaults: batch 128, seed 0)
        masked_finetune(m, {}, batches(x_tr, y_tr, 128, 0), finetune, teacher=model)
        val = accuracy(m, [(x_val, y_val)])
        test = accuracy(m, [splits.test.tensors()])
        artifact = export_pte(m, (example,), out / "l1.pte")
        summary = measure(devices[0], Path(artifact.path), BenchSettings(10, bench_runs, 1.0, 1))
    return {"val": val, "test": test, "cut": cut, "latency_ms": summary["p50_ms"], "pte": str(artifact.path),
            "ratio": ratio}


def _side_by_side(paths: dict[str, Path], rounds: int = 3) -> dict[str, float]:
    """Median p50 of every artifact, measured in interleaved rounds in one session (load drifts over a
    long run; separate sessions made the dense reference alone vary by 20% on this shared machine)."""
    import statistics

    from host.search.devices import BenchSettings, measure, open_devices

    samples: dict[str, list[float]] = {name: [] for name in paths}
    with open_devices(["local"]) as devices:
        for _ in range(rounds):
            for name, path in paths.items():
                samples[name].append(measure(devices[0], path, BenchSettings(10, 50, 1.0, 1))["p50_ms"])
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--out", default="runs/search_bench")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-latency", default="0.6x",
                        help="latency target of the latency and random rows (default 0.6x of dense)")
    parser.add_argument("--target-flops", type=float, default=0.5, help="MAC cut of the flops row (0.5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("host.search").setLevel(logging.INFO)  # one line per candidate, to follow a long run
    import torch

    torch.set_num_threads(1)  # busy 2-core machine: see EvalConfig.host_threads

    from host.search.config import SearchConfig
    from host.search.finetune import FinetuneConfig
    from host.search.runner import load_trained

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; pass another --out", file=sys.stderr)
        return 2
    finetune = FinetuneConfig(epochs=args.finetune_epochs, distill_alpha=0.5)
    base = SearchConfig(budget=args.budget, final_top=1, finetune=finetune, seed=args.seed, export_tflite=False)
    rows = {}
    for name, changes in (
        ("latency", {"objective": "latency", "target": args.target_latency}),
        ("flops", {"objective": "flops", "target": None, "target_flops": args.target_flops}),
        ("random", {"objective": "latency", "target": args.target_latency, "strategy": "random"}),
        # ablation: everything of `latency` except learning (PPO's learning rate 0: the policy stays the prior)
        ("no-learn", {"objective": "latency", "target": args.target_latency,
                      "ppo": replace(base.ppo, learning_rate=0.0)}),
    ):
        result, final, seconds = _search(base, name, out, **changes)
        dense = result["dense"]
        rows["dense"] = {"val": dense["val_accuracy"], "test": dense.get("test_accuracy"), "cut": 0.0,
                         "latency_ms": dense["latency_ms"].get("local")}
        if final is None:
            rows[name] = None
            continue
        rows[name] = {"val": final["val_accuracy"], "test": final["test_accuracy"],
                      "cut": 1 - final["macs"] / dense["macs"], "latency_ms": final["latency_ms"].get("local"),
                      "seconds": seconds, "best_search_reward": (result.get("best_search") or {}).get("reward")}
    model, splits = load_trained(base, lambda _p: None)
    if rows.get("latency"):
        rows["l1"] = _uniform_l1(model, splits, rows["latency"]["latency_ms"], finetune, out, 50)

    from host.export import export_pte

    paths = {"dense": Path(export_pte(model, (splits.val.tensors()[0][:1],), out / "dense.pte").path)}
    for name in ("latency", "flops", "random", "no-learn"):
        if rows.get(name):
            paths[name] = out / name / "final-1.pte"
    if rows.get("l1"):
        paths["l1"] = Path(rows["l1"]["pte"])
    for name, ms in _side_by_side(paths).items():
        rows[name]["latency_ms"] = ms

    print(f"\nResNet-20 / MNIST-5k (16 px), budget {args.budget} candidates per search, latency target "
          f"{args.target_latency}, flops target {args.target_flops:.0%} MAC cut, {args.finetune_epochs} fine-tuning "
          "epochs; local agent (ExecuTorch XNNPACK, 1 thread); latency = median of 3 interleaved rounds of p50 "
          "over 50+ runs, side by side\n")
    print("| method | val acc | test acc | MAC cut | p50 latency (ms) | speed-up vs dense | search time (s) |")
    print("|---|---|---|---|---|---|---|")
    dense_ms = rows["dense"]["latency_ms"]
    for name in ("dense", "latency", "flops", "random", "no-learn", "l1"):
        r = rows.get(name)
        if not r:
            print(f"| {name} | (no result) | | | | | |")
            continue
        test = "-" if r["test"] is None else f"{100 * r['test']:.2f}%"
        secs = f"{r['seconds']:.0f}" if r.get("seconds") else "-"
        print(f"| {name} | {100 * r['val']:.2f}% | {test} | {100 * r['cut']:.1f}% | {r['latency_ms']:.4f} "
              f"| {dense_ms / r['latency_ms']:.2f}x | {secs} |")
    lat, flo, rnd, l1 = (rows.get(n) for n in ("latency", "flops", "random", "l1"))
    if lat and flo:
        speed = flo["latency_ms"] / lat["latency_ms"]
        diff_val, diff_test = 100 * (lat["val"] - flo["val"]), 100 * (lat["test"] - flo["test"])
        ok = speed >= 1.2 and diff_test >= -0.5
        # judged on TEST: validation picked each row's winner, so its val figure is biased upwards. A latency
        # result MORE accurate than the flops one passes: the target bounds the accuracy it may lose.
        print(f"\nlatency vs flops: {speed:.2f}x faster, accuracy difference val {diff_val:+.2f} / test "
              f"{diff_test:+.2f} points -> {'MET' if ok else 'NOT MET'} (>= 1.2x, at most 0.5 point less "
              "accurate on test)")
    if lat and l1:
        print(f"latency vs uniform L1 at matched latency ({l1['latency_ms']:.4f} vs {lat['latency_ms']:.4f} ms): "
              f"val {100 * (lat['val'] - l1['val']):+.2f} / test {100 * (lat['test'] - l1['test']):+.2f} points -> "
              f"{'MET' if lat['test'] >= l1['test'] else 'NOT MET'} (at least as accurate on test)")
    nol = rows.get("no-learn")
    if lat and nol:
        print(f"PPO vs the same search without learning: best search reward {lat['best_search_reward']:.4f} vs "
              f"{nol['best_search_reward']:.4f}; final {dense_ms / lat['latency_ms']:.2f}x / test "
              f"{100 * lat['test']:.2f}% vs {dense_ms / nol['latency_ms']:.2f}x / test {100 * nol['test']:.2f}%")
    if lat and rnd:
        print(f"PPO vs random: best search reward {lat['best_search_reward']:.4f} vs {rnd['best_search_reward']:.4f}; "
              f"final {dense_ms / lat['latency_ms']:.2f}x / val {100 * lat['val']:.2f}% vs "
              f"{dense_ms / rnd['latency_ms']:.2f}x / val {100 * rnd['val']:.2f}%")
    (out / "bench.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
