"""``sculpt-host inspect``: a model's prunable layers, coupled channel groups, MACs/params and the pruning
patterns each layer may take — the same graph the search policy sees."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from host.graph import ModelGraph

INSPECT_SCHEMA_VERSION = 1  # of `inspect --json`; raised when a key changes meaning or goes away


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="show a model's prunable layers, coupled groups, MACs/params and the patterns each layer may take",
        description="Trace a model into the graph the search uses and print its prunable layers (kind, shape, "
                    "MACs, params), the dataflow between them, coupled channel groups and the pruning patterns "
                    "available per layer.",
    )
    p.add_argument("--model", default="resnet20",
                   help="zoo name, timm:NAME, torchvision:NAME, package.module:factory, or .pt2 (default resnet20)")
    p.add_argument("--model-arg", action="append", dest="model_args", metavar="KEY=VALUE",
                   help="constructor argument for timm/torchvision/factory models, repeatable (e.g. depth=2)")
    p.add_argument("--checkpoint", help="state dict to load (weight statistics then describe the trained weights)")
    p.add_argument("--data", help="dataset whose channels/classes size the model (mnist, digits, cifar10, imagefolder)")
    p.add_argument("--data-root", help="folder of a local dataset (cifar10, imagefolder)")
    p.add_argument("--image-size", type=int, default=32, help="input size in pixels (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="input channels (default: the dataset's, else 3)")
    p.add_argument("--num-classes", type=int, help="classes (default: the dataset's, else 10)")
    p.add_argument("--width", type=float, default=1.0, help="zoo model width multiplier (default 1)")
    p.add_argument("--json", action="store_true", help="print the graph as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from host.data import dataset_info
    from host.graph import build_model_graph
    from host.models.external import parse_model_args
    from host.models.loader import load_model

    channels, classes = 3, 10
    if args.data:
        info = dataset_info(args.data, root=args.data_root)
        channels, classes = info.channels, info.num_classes
    channels = args.channels or channels
    classes = args.num_classes or classes
    model = load_model(args.model, checkpoint=args.checkpoint, num_classes=classes, in_channels=channels,
                       image_size=args.image_size, width=args.width, model_args=parse_model_args(args.model_args))
    example = torch.zeros(1, channels, args.image_size, args.image_size)
    graph = build_model_graph(model, example)
    summary = {"schema_version": INSPECT_SCHEMA_VERSION, "model": args.model, "data": args.data, "input_shape": [channels, args.image_size, args.image_size],
               "num_classes": classes, **graph.to_dict()}
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_human(graph, summary)
    return 0


def _family_counts(choices: Iterable[tuple[str, str]]) -> str:
    counts = Counter(family for family, _ in choices if family != "keep")
    return " ".join(f"{family}({n})" for family, n in counts.items()) or "-"


def _print_human(graph: ModelGraph, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    # piped output gets a fixed, wide layout instead of rich's 80-column default
    console = Console(width=None if sys.stdout.isatty() else 150)
    total = graph.total_macs or 1
    group_index = {}
    for index, group in enumerate(graph.groups):
        for name in group.producers:
            group_index.setdefault(name, index)
    table = Table(title=f"{summary['model']}: {len(graph.layers)} prunable layers, input {tuple(summary['input_shape'])}")
    for column in ("#", "layer", "kind", "channels", "k/s/g", "out", "MACs", "%MACs", "params", "group",
                   "patterns (per family)"):
        table.add_column(column, no_wrap=column != "patterns (per family)",
                         justify="right" if column in ("#", "MACs", "%MACs", "params", "group") else "left")
    for layer in graph.layers:
        table.add_row(
            str(layer.index), layer.name, layer.kind, f"{layer.in_channels}->{layer.out_channels}",
            f"{layer.kernel[0]}x{layer.kernel[1]}/{layer.stride[0]}/{layer.groups}",
            f"{layer.out_size[0]}x{layer.out_size[1]}", f"{layer.macs:,}", f"{100 * layer.macs / total:.1f}",
            f"{layer.params:,}", str(group_index.get(layer.name, "-")), _family_counts(graph.choices[layer.name]),
        )
    console.print(table)
    edges = Counter(edge.type for edge in graph.edges)
    console.print(f"MACs (prunable layers, per sample): {graph.total_macs:,}   params (whole model): "
                  f"{graph.total_params:,}   edges: " + ", ".join(f"{n} {t}" for t, n in edges.items()))
    console.print(f"\n[bold]{len(graph.groups)} coupled channel groups[/bold] (channels removed together)")
    for index, group in enumerate(graph.groups):
        producers = group.producers
        shown = ", ".join(producers[:4]) + (f", ... (+{len(producers) - 4})" if len(producers) > 4 else "")
        console.print(f"  {index:>3}  {group.channels:>5} ch  {'private' if group.private else 'shared '}  {shown}")
        refusal = graph.channel_refusal(group)
        if refusal:
            console.print(f"       [yellow]no channel choices:[/yellow] {refusal}", highlight=False)
    console.print("\n[bold]Patterns per layer[/bold] (layers with the same choices are listed together)")
    by_set: dict[tuple, list[str]] = defaultdict(list)
    for layer in graph.layers:
        by_set[tuple(graph.choices[layer.name])].append(layer.name)
    for choices, layers in by_set.items():
        names = ", ".join(layers[:3]) + (f", ... ({len(layers)} layers)" if len(layers) > 3 else "")
        console.print(f"  [cyan]{names}[/cyan]\n    " + " ".join(f"{f}:{p}" for f, p in choices))
