"""What dropping whole-dimension aliases before XNNPACK lowering buys (host.export.pte.drop_aliases).

For each model (corpus entries, dense and realized floor plan), exports the same module twice, side by side
in one run: with the pass, and with it replaced by a pass that changes nothing. Prints per export: lowering
seconds, XNNPACK delegate calls, operators left to the portable runtime, and the median latency of the
.pte in the real ExecuTorch runtime (one thread, interleaved runs so machine noise hits both arms alike).

    .venv/bin/python benchmarks/export_bench.py                       # timm GhostNet-0.5 (has aliases)
    .venv/bin/python benchmarks/export_bench.py --only timm_ghostnet_050 tv_mobilenet_v2 --runs 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _no_pass(graph_module):
    from executorch.exir.pass_base import PassResult

    return PassResult(graph_module, False)


def _export(module, x, path: Path, with_pass: bool):
    import host.export.pte as pte

    keep = pte.drop_aliases
    pte.drop_aliases = keep if with_pass else _no_pass
    try:
        artifact = pte.export_pte(module, (x,), path, cache=False)
    finally:
        pte.drop_aliases = keep
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary(path.read_bytes()).program.execution_plan[0]
    return artifact, len(plan.delegates), len(plan.chains[0].instructions) - len(plan.delegates)


def _latencies(paths: list[Path], x, runs: int) -> list[float]:
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    methods = [runtime.load_program(p).load_method("forward") for p in paths]
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(5):
        for m in methods:
            m.execute([x])
    for _ in range(runs):
        for i, m in enumerate(methods):
            start = time.perf_counter()
            m.execute([x])
            times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["timm_ghostnet_050"], help="corpus entries")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per artifact")
    args = parser.parse_args()

    import torch

    import host.models.loader  # noqa: F401 - registers torchvision's ops on CPU torch
    import patterns
    from host.search.space import SearchSpace
    from tests.fixtures import corpus

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            entry, model = corpus.entry(name), corpus.model(name)
            x = entry.example_input()
            space = SearchSpace(model, x, name=name)
            floor = patterns.realize(model, space.decode(space.floor_choices())[0], x)
            for variant, module in (("dense", model), ("floor", floor)):
                patterns.fuse_batchnorm(module, x)
                arms = []
                for with_pass in (False, True):
                    path = Path(tmp) / f"{name}-{variant}-{with_pass}.pte"
                    artifact, delegates, portable = _export(module, x, path, with_pass)
                    lower_s = dict(artifact.timings)["lower"]
                    arms.append((with_pass, path, lower_s, delegates, portable))
                medians = _latencies([a[1] for a in arms], x, args.runs)
                for (with_pass, _, lower_s, delegates, portable), ms in zip(arms, medians, strict=True):
                    rows.append((name, variant, "drop_aliases" if with_pass else "none", lower_s, delegates,
                                 portable, ms))
                print(f"done {name} {variant}", file=sys.stderr, flush=True)

    print(f"| model | plan | pass | lower s | delegate calls | portable ops | median ms ({args.runs} runs) |")
    print("|---|---|---|---|---|---|---|")
    for name, variant, arm, lower_s, delegates, portable, ms in rows:
        print(f"| {name} | {variant} | {arm} | {lower_s:.1f} | {delegates} | {portable} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
