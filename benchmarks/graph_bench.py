"""Graph construction + node-feature time per zoo model (target: each < 2 s, ResNet-110 and the ViT included).

Usage:  .venv/bin/python benchmarks/graph_bench.py [--repeats 5] [--image-size 32] [--threads 2]

Prints a Markdown table: median wall time of build_model_graph (fx trace + one eager forward + torch-pruning
coupled groups + per-layer choices + structural features), of which the torch-pruning DependencyGraph part,
and of to_pyg (pattern features + PyG Data). The torch-pruning column times coupled_groups alone (it is
part of the build), plus CPU time, layer/edge/group counts. The machine may be
shared: the CPU-time column is the less noisy one. build_model_graph runs its forward pass on one thread
whatever --threads says (it restores the setting afterwards).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

MODELS = ("resnet20", "resnet56", "resnet110", "mobilenetv2", "vgg16", "vit_tiny")
TARGET_S = 2.0


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, repeats: int, image_size: int) -> dict:
    from host.graph import build_model_graph
    from host.models.zoo import create_model
    from patterns.structure import coupled_groups

    torch.manual_seed(0)
    model = create_model(name, image_size=image_size).eval()
    x = torch.randn(1, 3, image_size, image_size)
    build_model_graph(model, x).to_pyg()  # warm-up: lazy imports, allocator, oneDNN kernels
    build, pyg, cpu, groups = [], [], [], []
    for _ in range(repeats):
        graph, wall_build, cpu_build = _timed(lambda: build_model_graph(model, x))
        data, wall_pyg, cpu_pyg = _timed(graph.to_pyg)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as inside build_model_graph
        _, wall_groups, _ = _timed(lambda: coupled_groups(model, x))
        torch.set_num_threads(threads)
        build.append(wall_build)
        pyg.append(wall_pyg)
        cpu.append(cpu_build + cpu_pyg)
        groups.append(wall_groups)
    total = statistics.median(b + p for b, p in zip(build, pyg, strict=True))
    return {"model": name, "layers": len(graph.layers), "edges": len(graph.edges), "groups": len(graph.groups),
            "features": data.x.shape[1], "build": statistics.median(build), "tp_groups": statistics.median(groups),
            "to_pyg": statistics.median(pyg), "total": total, "cpu": statistics.median(cpu),
            "ok": total < TARGET_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"graph construction + features, input 1x3x{args.image_size}x{args.image_size}, "
          f"median of {args.repeats}, torch threads {args.threads}, target < {TARGET_S:.0f} s\n")
    print("| model | layers | edges | groups | features | build s | torch-pruning part s | to_pyg s "
          "| total s | CPU s | < 2 s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for name in args.models:
        r = bench(name, args.repeats, args.image_size)
        print(f"| {r['model']} | {r['layers']} | {r['edges']} | {r['groups']} | {r['features']} | {r['build']:.3f} "
              f"| {r['tp_groups']:.3f} | {r['to_pyg']:.4f} | {r['total']:.3f} | {r['cpu']:.3f} "
              f"| {'yes' if r['ok'] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
