"""Generality: how much of each corpus architecture (tests/fixtures/corpus.py) AutoSculpt can prune and speed up.

One row per architecture:
- layers: prunable layers the search addresses;
- realizable: share of the dense MACs in layers with at least one choice that realizes into a smaller dense
  layer (channel, kernel window, attention heads / hidden units; not N:M, tile or PatDNN masks);
- floor: the floor plan (most aggressive valid choice on every layer) realized, its MAC cut, and its speed-up
  on the local agent, dense and floor .pte measured side by side in interleaved rounds;
- search: a budget-8 latency search at --target-latency (0.7x) on the 5k MNIST digits (3 channels, the entry's
  size) from a checkpoint trained here for --train-epochs; its final model's MAC cut, speed-up (measured side by
  side with the dense .pte again) and validation accuracy against dense (or why it failed);
- px: the input size the row was measured at: the entry's own (the CI size, 32 px for most), doubled until the
  dense model runs at least --min-dense-ms (0.5 ms) on the agent, up to 256 px. Below that XNNPACK's fixed
  per-operator cost, not the model's work, sets the latency (LCNet-0.5 at 32 px: 0.09 ms, and a 54% MAC
  cut ran slower than dense), which no edge deployment of these networks sees;
- torch-pruning: tp.pruner.MagnitudePruner at 50% (the layers producing the logits ignored) runs or fails,
  and whether our channel choices cover every layer it prunes.

    .venv/bin/python benchmarks/generality_bench.py [--only NAME[,NAME]] [--no-search] [--out DIR]
        [--budget 8] [--target-latency 0.7x] [--rounds 3] [--train-epochs 10] [--finetune-epochs 3]
        [--data-limit 3000] [--min-dense-ms 0.5]

Prints a markdown table and writes it to DIR/generality.md (rows also as DIR/generality.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.fixtures.corpus, and its two hand-written factories for the search

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tests.fixtures import corpus  # noqa: E402

REALIZABLE = ("channel", "kernel", "vit")  # the families with a smaller dense form (host.search.space)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def realizable_share(space) -> float:
    """Share of the model's dense MACs in layers with at least one realizable (speed-giving) choice."""
    from host.search.space import MASK_ONLY_PATTERNS

    graph = space.graph
    total = max(graph.total_macs, 1)
    groups = {name: group for group in graph.groups for name in group.producers}
    macs = 0
    for layer in graph.layers:
        options = graph.choices.get(layer.name, [])
        ok = any(f in REALIZABLE and f"{f}:{p}" not in MASK_ONLY_PATTERNS for f, p in options)
        group = groups.get(layer.name)
        if not ok and group is not None and group.root != layer.name:  # channel choices sit on the root
            ok = any(f == "channel" for f, _ in graph.choices.get(group.root, []))
        macs += layer.macs if ok else 0
    return macs / total


def channel_covered(space) -> set[str]:
    """Layers whose output channels our channel choices can remove (group roots carry the group's choice)."""
    graph = space.graph
    covered = {name for name, options in graph.choices.items() if any(f == "channel" for f, _ in options)}
    for group in graph.groups:
        if group.root in covered:
            covered.update(group.producers)
    return covered


TP_SECONDS = 600  # torch-pruning's own pruner on EfficientViT-M0 walks its groups for hours (see patterns.structure)


def torch_pruning_row(model: nn.Module, x: torch.Tensor, ours: set[str], timeout: float = TP_SECONDS) -> str:
    """:func:`_torch_pruning_row` in a child process, given ``timeout`` seconds: torch-pruning's own walk of a
    model's groups is not bounded the way ours is, and one architecture must not stall the table. The child is
    spawned, not forked: a child forked after the bench has run torch ops hangs in torch's thread pool (every
    row of stop 30's table read "did not finish"; LCNet-0.5's pruning takes 0.1 s)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    import pickle

    # pickled here and unpickled in the child after torchvision's ops are declared there (prepare_unpickling)
    child = context.Process(target=_torch_pruning_child, args=(results, pickle.dumps(model), x, ours), daemon=True)
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return f"torch-pruning itself did not finish in {timeout:g} s"
    try:
        return results.get(timeout=10)
    except Exception:  # noqa: BLE001 - the child died without a row (a crash inside the library)
        return f"torch-pruning itself crashed (exit code {child.exitcode})"


def _torch_pruning_child(results, model: bytes, x: torch.Tensor, ours: set[str]) -> None:
    import pickle

    from host.models.external import prepare_unpickling

    torch.set_num_threads(1)
    prepare_unpickling()
    results.put(_torch_pruning_row(pickle.loads(model), x, ours))


def _torch_pruning_row(model: nn.Module, x: torch.Tensor, ours: set[str]) -> str:
    """Run torch-pruning's 50% magnitude channel pruning; say whether our channel choices cover its layers."""
    import torch_pruning as tp

    m = copy.deepcopy(model)
    widths = {n: _width(mod) for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)}
    with torch.no_grad():
        logits = m(x)
    ignored = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d | nn.Linear) and
               _width(mod) == logits.shape[-1]]  # the layers producing the logits keep their width
    try:
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=0.5, ignored_layers=ignored, global_pruning=False)
        pruner.step()
        with torch.no_grad():
            m(x)
    except Exception as exc:  # noqa: BLE001 - the column reports whatever torch-pruning raises
        return f"fails: {_short(exc)}"
    pruned = {n for n, mod in m.named_modules() if n in widths and _width(mod) < widths[n]}
    missing = sorted(pruned - ours)
    if not pruned:
        return "runs, prunes nothing"
    if not missing:
        return f"runs ({len(pruned)} layers), covered"
    return f"runs ({len(pruned)} layers), {len(missing)} not covered: {', '.join(missing[:3])}"


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def side_by_side(devices, paths: dict[str, Path], rounds: int) -> dict[str, float]:
    """Median p50 (ms) of every artifact, measured in interleaved rounds on one device session."""
    from host.devices.policy import BenchPolicy
    from host.devices.results import BenchSpec
    from host.search.devices import measure

    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            samples[name].append(measure(devices[0], path, BenchSpec(threads=1, policy=BenchPolicy.final())).p50_ms)
    return {name: statistics.median(values) for name, values in samples.items()}


def floor_row(entry, model, space, out: Path, devices, rounds: int) -> dict:
    import patterns
    from host.export import export_pte

    x = entry.example_input()
    plan = space.decode(space.floor_choices())[0]
    base = patterns.count(model, x).dense_macs
    small = patterns.realize(model, plan, x)
    cut = 1 - patterns.count(small, x).dense_macs / base
    patterns.fuse_batchnorm(small, x)
    dense_pte = export_pte(model, (x,), out / "dense.pte").path
    floor_pte = export_pte(small, (x,), out / "floor.pte").path
    ms = side_by_side(devices, {"dense": dense_pte, "floor": floor_pte}, rounds)
    return {"floor_cut": cut, "dense_ms": ms["dense"], "floor_ms": ms["floor"],
            "floor_speedup": ms["dense"] / ms["floor"]}


def search_row(entry, out: Path, devices, args) -> dict:
    """Train a checkpoint briefly, run a budget-N latency search from it, measure its final model again."""
    from host.data import load_dataset
    from host.export import export_pte
    from host.models.train import TrainConfig, train
    from host.search.config import ModelSpec, SearchConfig
    from host.search.finetune import FinetuneConfig
    from host.search.runner import SearchRunner

    _, c, size, _ = entry.input_shape
    splits = load_dataset("mnist", image_size=size, channels=c, seed=0, limit=args.data_limit)
    model = entry.build().train()
    result = train(model, splits, TrainConfig(epochs=args.train_epochs))
    model.eval()
    checkpoint = out / "trained.pt"
    torch.save(model.state_dict(), checkpoint)
    spec = ModelSpec(model=entry.spec, model_args=dict(entry.kwargs), data="mnist", image_size=size,
                     in_channels=c, data_limit=args.data_limit, checkpoint=str(checkpoint))
    config = replace(SearchConfig(), out=out / "search", model=spec, devices=("local",), budget=args.budget,
                     objective="latency", target=args.target_latency, final_top=1, export_tflite=False,
                     finetune=FinetuneConfig(epochs=args.finetune_epochs, distill_alpha=0.5))
    found = SearchRunner.start(config).run().to_dict()  # the result.json form
    finals = found.get("finals") or []
    if not finals:
        return {"search": "no final model", "dense_val": result.val_accuracy}
    final = finals[0]
    dense_pte = export_pte(model, (splits.val.tensors()[0][:1],), out / "trained-dense.pte").path
    final_pte = out / "search" / "final-1.pte"
    ms = side_by_side(devices, {"dense": dense_pte, "final": final_pte}, args.rounds)
    dense = found["dense"]
    return {"search_cut": 1 - final["macs"] / dense["macs"], "search_speedup": ms["dense"] / ms["final"],
            "search_val": final.get("val_accuracy"), "dense_val": dense.get("val_accuracy")}


def at_size(entry, size: int):
    """``entry`` built for ``size`` px inputs (an explicit ``img_size`` kwarg, timm's spelling, or ``image_size``,
    this project's, follows the size)."""
    kwargs = dict(entry.kwargs)
    for key in ("img_size", "image_size"):
        if key in kwargs:
            kwargs[key] = size
    return replace(entry, kwargs=kwargs, input_shape=(*entry.input_shape[:2], size, size))


def sized_entry(entry, out: Path, devices, min_ms: float, max_size: int = 256):
    """The entry at the smallest size (its own, doubled) whose dense model runs >= ``min_ms`` on the agent."""
    from host.devices.policy import BenchPolicy
    from host.devices.results import BenchSpec
    from host.export import export_pte
    from host.search.devices import measure

    out.mkdir(parents=True, exist_ok=True)
    while True:
        model, x = entry.build(), entry.example_input()
        path = export_pte(model, (x,), out / "size-probe.pte").path
        ms = measure(devices[0], path, BenchSpec(threads=1, policy=BenchPolicy.final())).p50_ms
        path.unlink(missing_ok=True)
        size = entry.input_shape[-1]
        if ms >= min_ms or 2 * size > max_size:
            return entry
        print(f"   {entry.name}: dense {ms:.3f} ms at {size} px, measuring at {2 * size} px", file=sys.stderr,
              flush=True)
        entry = at_size(entry, 2 * size)


def run_entry(entry, out: Path, devices, args) -> dict:
    from host.search.space import SearchSpace

    row: dict = {"name": entry.name, "spec": entry.spec, "tags": list(entry.tags)}
    start = time.perf_counter()
    try:
        entry = sized_entry(entry, out, devices, args.min_dense_ms)
    except Exception as exc:  # noqa: BLE001 - one row per architecture, whatever fails
        row["error"] = f"dense export/measurement: {_short(exc)}"
        return row
    row["px"] = entry.input_shape[-1]
    model = entry.build()
    x = entry.example_input()
    try:
        space = SearchSpace(model, x, name=entry.name)
    except Exception as exc:  # noqa: BLE001 - one row per architecture, whatever fails
        row["error"] = f"graph/search space: {_short(exc)}"
        return row
    row["layers"] = len(space.layer_names)
    row["realizable"] = realizable_share(space)
    row["torch_pruning"] = torch_pruning_row(model, x, channel_covered(space))
    out.mkdir(parents=True, exist_ok=True)
    try:
        row.update(floor_row(entry, model, space, out, devices, args.rounds))
    except Exception as exc:  # noqa: BLE001
        row["floor_error"] = _short(exc)
        traceback.print_exc(file=sys.stderr)
    if args.search:
        try:
            row.update(search_row(entry, out, devices, args))
        except Exception as exc:  # noqa: BLE001
            row["search"] = f"failed: {_short(exc)}"
            traceback.print_exc(file=sys.stderr)
    row["seconds"] = time.perf_counter() - start
    return row


def _pct(v) -> str:
    return f"{100 * v:.0f}%" if isinstance(v, float) else "-"


def _x(v) -> str:
    return f"{v:.2f}x" if isinstance(v, float) else "-"


def table(rows: list[dict], args) -> str:
    head = ["architecture", "families", "px", "layers", "realizable MACs", "floor cut", "floor speed-up",
            "dense ms", "torch-pruning 50%"]
    if args.search:
        head[7:7] = [f"search {args.target_latency} cut", "search speed-up", "search val acc (dense)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["name"], ", ".join(r["tags"]), "-", "-", "-", r["error"], "", "", ""]
            if args.search:
                cells[7:7] = ["", "", ""]
        else:
            floor = _x(r.get("floor_speedup")) if "floor_error" not in r else f"failed: {r['floor_error']}"
            cells = [r["name"], ", ".join(r["tags"]), str(r.get("px", "-")), str(r["layers"]), _pct(r["realizable"]),
                     _pct(r.get("floor_cut")), floor,
                     f"{r['dense_ms']:.3f}" if "dense_ms" in r else "-", r["torch_pruning"]]
            if args.search:
                search = r.get("search")
                acc = (f"{_pct(r.get('search_val'))} ({_pct(r.get('dense_val'))})" if "dense_val" in r else "")
                cells[7:7] = [search or _pct(r.get("search_cut")), "" if search else _x(r.get("search_speedup")), acc]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated corpus names (default: all)")
    parser.add_argument("--no-search", dest="search", action="store_false", help="skip the searches (fast)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "generality", help="default runs/generality")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--target-latency", default="0.7x")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (default 3)")
    parser.add_argument("--train-epochs", type=int, default=10,
                        help="epochs of the checkpoint the search starts from (default 10)")
    parser.add_argument("--finetune-epochs", type=int, default=3, help="final fine-tuning epochs (default 3)")
    parser.add_argument("--data-limit", type=int, default=3000, help="MNIST digits used by the search (3000)")
    parser.add_argument("--min-dense-ms", type=float, default=0.5,
                        help="double the input size (up to 256 px) until dense runs this long (default 0.5 ms; "
                             "0 keeps every entry's own size)")
    args = parser.parse_args(argv)
    import os

    # the searches learn the device latency model into a store of this bench's own (under --out), so a row does
    # not depend on what earlier runs on this machine left in ~/.cache/autosculpt/devices (unless the variable
    # is set); rows of one invocation still share it, in the order they run
    os.environ.setdefault("AUTOSCULPT_DEVICE_MODELS", str(args.out.resolve() / "device-models"))
    names = args.only.split(",") if args.only else list(corpus.NAMES)
    entries = [corpus.entry(n.strip()) for n in names]

    from host.search.devices import open_devices

    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    header = (f"Generality over the corpus (tests/fixtures/corpus.py), local agent, XNNPACK fp32, 1 thread; "
              f"speed-ups are dense/pruned p50, median of {args.rounds} interleaved rounds.\n\n")
    with open_devices(["local"]) as devices:
        for entry in entries:
            print(f"== {entry.name}", file=sys.stderr, flush=True)
            rows.append(run_entry(entry, args.out / entry.name, devices, args))
            # rewritten after every architecture: a long run that is stopped keeps its finished rows
            (args.out / "generality.json").write_text(json.dumps(rows, indent=2, default=str))
            (args.out / "generality.md").write_text(header + table(rows, args) + "\n")
    print(header + table(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
