"""Measured ExecuTorch/XNNPACK latency of realized pruning patterns vs dense and masks-only.

For each model (ResNet-20, ResNet-56, MobileNetV2 by default, full width, 32x32, batch 1), plans are tuned
to about 50% MAC reduction (exact non-zero counting), realized (checked against the masked model), exported
to .pte and timed IN-PROCESS with executorch.runtime, all variants of a model interleaved round-robin
(fastest of a few calls per round, median over rounds, speed-ups as the median of per-round ratios), with
the XNNPACK thread pool fixed. Prints one table; the target is speed-up >= 0.8 x MAC ratio for every
realized form (masks-only is shown for contrast: it does the dense work). The NR column counts MACs with
every GEMM's output channels rounded up to XNNPACK's tile width (plus the border outputs off-centre kernel
windows compute and slice off): the work the engine really does.

    .venv/bin/python benchmarks/realize_bench.py [--models resnet20,resnet56,mobilenetv2] [--threads 1] [--int8]
        [--image-size 32] [--width 1]

``--int8`` adds an int8 twin of dense and of every realized variant (PT2E, XNNPACK quantizer, calibrated on
8 random inputs: latency does not depend on the values), timed in the same interleaved rounds. Its table:
pruned int8 vs dense int8 (target >= 0.7 x MAC ratio), and pruned int8 vs dense fp32 against pruning alone
(pruned fp32) and quantization alone (dense int8): the combination must beat both.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from host.export import export_pte
from host.models.zoo import create_model
from patterns import LayerAssignment, Plan, apply_masks, count, fuse_batchnorm, prunable_layers, realize
from patterns.kernel import KernelFamily

TARGET = 0.5
NR = 16  # XNNPACK's f32 GEMM tile width (output channels) on this machine (AVX2 + FMA3: 5x16 kernels)


@dataclass
class Variant:
    name: str
    module: nn.Module
    macs: int  # what the engine executes (dense count of the exported module)
    nonzero_macs: int
    padded_macs: int  # ``macs`` with every GEMM's output channels rounded up to XNNPACK's tile width
    notes: list[str]
    path: Path | None = None
    export_s: float = 0.0
    int8: bool = False


def _kernel_convs(model: nn.Module) -> list[str]:
    family = KernelFamily()
    return [n for n in prunable_layers(model) if family.applies_to(model.get_submodule(n)) and n != "conv1"
            and not n.startswith("features.0.")]


def _private(name: str) -> bool:
    return name.endswith("conv1")  # ResNet: conv1 of a block feeds only conv2 (through BN/ReLU)


def plans_for(model: nn.Module, name: str) -> dict[str, Callable[[float], Plan]]:
    """Plan families parameterized by one strength knob, tuned below to ~50% MAC reduction."""
    convs = _kernel_convs(model)
    layers = prunable_layers(model)
    plans: dict[str, Callable[[float], Plan]] = {}
    if name.startswith("resnet"):
        inner = [n for n in convs if _private(n)]

        def kernel_mix(r: float, pattern: str = "paper6", tile: int | None = None) -> Plan:
            # The paper's six shapes on every 3x3 conv. paper6: the exact mix (residual convs pay a gather);
            # paper6_tiled: shares rounded to whole 16-filter tiles (residual convs: contiguous blocks, no
            # gather); ``tile`` overrides the tile through the plan's params.
            params = (("tile", tile),) if tile is not None else ()
            return Plan.from_mapping({n: LayerAssignment("kernel", pattern, ratio=r, params=params)
                                      for n in convs})

        def kernel_uniform(r: float) -> Plan:
            # ONE window per layer everywhere (row1 on the first share r of the 3x3 convs, row2 on the rest):
            # one dense conv per layer, no concat, no gather.
            cut = int(r * len(convs) + 0.5)
            return Plan.from_mapping({n: LayerAssignment("kernel", "row1" if i < cut else "row2")
                                      for i, n in enumerate(convs)})

        def channel(r: float) -> Plan:
            return Plan.from_mapping({n: LayerAssignment("channel", "prune50", ratio=r) for n in inner})

        def mixed(r: float) -> Plan:
            # Even blocks lose channels (kept widths a multiple of 8), odd blocks take uniform kernel windows.
            a: dict[str, LayerAssignment] = {}
            for i, n in enumerate(inner):
                block = n.rsplit(".", 1)[0]
                if i % 2 == 0:
                    a[n] = LayerAssignment("channel", "prune50", ratio=r, params=(("multiple", 8),))
                else:
                    a[n] = LayerAssignment("kernel", "row1")
                    a[f"{block}.conv2"] = LayerAssignment("kernel", "row2")
            return Plan.from_mapping(a)

        plans.update({"kernel one window/layer": kernel_uniform,
                      "kernel paper6 exact": kernel_mix,
                      "kernel paper6_tiled (16)": lambda r: kernel_mix(r, "paper6_tiled"),
                      "kernel paper6 tile 8": lambda r: kernel_mix(r, "paper6", 8),
                      "kernel rowcol exact": lambda r: kernel_mix(r, "rowcol"),
                      "kernel rowcol tile 16": lambda r: kernel_mix(r, "rowcol", 16),
                      "channel": channel, "mixed chan+kernel": mixed})
        plans["masks-only (paper6)"] = kernel_mix
    else:
        expand = [n for n in layers if n.endswith("conv.0.0") and model.get_submodule(n).kernel_size == (1, 1)]
        project = [n for n in layers if n.endswith(".conv.2.0") or n.endswith(".conv.1.0") and
                   model.get_submodule(n).kernel_size == (1, 1)]

        def channel(r: float) -> Plan:
            return Plan.from_mapping({n: LayerAssignment("channel", "prune50", ratio=r) for n in expand})

        def mixed(r: float, cols: bool = True) -> Plan:
            # Expand convs lose channels (kept widths a multiple of XNNPACK's 16-wide tile), the stem takes the
            # tiled paper mix, project convs lose input column blocks (an input gather each: block family).
            a = {n: LayerAssignment("channel", "prune50", ratio=r, params=(("multiple", NR),)) for n in expand}
            a["features.0.0"] = LayerAssignment("kernel", "paper6_tiled")
            if cols:
                a.update({n: LayerAssignment("block", "cols4_50", ratio=0.25) for n in project
                          if model.get_submodule(n).in_channels % 4 == 0 and n not in a})
            return Plan.from_mapping(a)

        plans.update({"channel": channel, "mixed chan+kernel+cols": mixed,
                      "mixed chan+kernel (no cols)": lambda r: mixed(r, cols=False)})
        plans["masks-only (channel)"] = channel
    return plans


def tile_padded_macs(model: nn.Module, x: torch.Tensor, nr: int = NR) -> int:
    """MACs when every GEMM-style layer's output channels are rounded up to XNNPACK's tile width ``nr``.

    XNNPACK's f32 GEMM/IGEMM micro-kernels compute ``nr`` output channels at a time (16 with AVX-512 here,
    8 on NEON), so a 3-filter sub-conv costs about as much as a 16-filter one. Depthwise convs use other
    kernels and are counted as they are. Pattern sub-convs count the border outputs that off-centre windows
    compute and slice off. This is the work model that explains the measured latencies.
    """
    from patterns.pattern_conv import PatternConv

    total = 0

    def padded(weight: torch.Tensor, groups: int, positions: int) -> int:
        out = weight.shape[0]
        per_output = weight.numel() // out
        width = out if groups != 1 else -(-out // nr) * nr
        return width * per_output * positions

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, PatternConv):  # off-centre windows also compute border outputs they slice off
            positions = module.computed_positions(inputs[0].shape[2], inputs[0].shape[3])
            for conv, computed in zip(module.convs, positions, strict=True):
                total += padded(conv.weight, 1, computed)
        elif isinstance(module, nn.Conv2d):
            total += padded(module.weight, module.groups, output.shape[2] * output.shape[3])
        else:
            total += padded(module.weight, 1, output.numel() // output.shape[-1] // output.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear | PatternConv)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def tune(model: nn.Module, x: torch.Tensor, make: Callable[[float], Plan], base: int) -> tuple[float, Plan]:
    """Bisect the knob so the masked model's non-zero MACs are ~50% of dense."""
    lo, hi = 0.0, 0.95
    best = (hi, make(hi))
    for _ in range(9):
        mid = (lo + hi) / 2
        plan = make(mid)
        masked = copy.deepcopy(model)
        apply_masks(masked, plan, x)
        reduction = 1 - count(masked, x).macs / base
        best = (mid, plan)
        if abs(reduction - TARGET) < 0.01:
            break
        lo, hi = (mid, hi) if reduction < TARGET else (lo, mid)
    return best


def build_variants(name: str, x: torch.Tensor, width: float = 1.0) -> list[Variant]:
    torch.manual_seed(0)
    model = create_model(name, image_size=x.shape[-1], width=width).eval()
    with torch.no_grad():  # BN statistics of a trained net, so norms/BN are not degenerate
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    base = count(model, x)
    variants = [Variant("dense", model, base.dense_macs, base.macs, tile_padded_macs(model, x), [])]
    for label, make in plans_for(model, name).items():
        _, plan = tune(model, x, make, base.dense_macs)
        masked = copy.deepcopy(model)
        apply_masks(masked, plan, x)
        if label.startswith("masks-only"):
            module, notes = masked, []
        else:
            module = realize(model, plan, x)
            notes = list(module.sculpt_notes)
            with torch.no_grad():
                err = float((module(x) - masked(x)).abs().max())
            if err > 1e-4:
                raise SystemExit(f"{name} {label}: realized output differs from the masked model by {err:.2e}")
        cost = count(module, x)
        if not label.startswith("masks-only"):
            fuse_batchnorm(module, x)  # as the engine does for plain conv+BN
        variants.append(Variant(label, module, cost.dense_macs, cost.macs, tile_padded_macs(module, x), notes))
    return variants


def time_interleaved(variants: list[Variant], x: torch.Tensor, *, rounds: int, calls: int,
                     warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """(latency ms, speed-up over the first variant) per variant, measured round-robin.

    Each round runs every variant ``calls`` times back to back and keeps the fastest call (the one least
    disturbed by other processes on a shared machine). Latency is the median over rounds; the speed-up is
    the median over rounds of the per-round ratio, so slow drifts of the machine's load cancel out.
    """
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    methods = {v.name: runtime.load_program(v.path).load_method("forward") for v in variants}
    inputs = [x]
    for method in methods.values():
        for _ in range(warmup):
            method.execute(inputs)
    best: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, method in methods.items():
            fastest = float("inf")
            for _ in range(calls):
                start = time.perf_counter_ns()
                method.execute(inputs)
                fastest = min(fastest, (time.perf_counter_ns() - start) / 1e6)
            best[name].append(fastest)
    return best


def summarize(best: dict[str, list[float]], reference: str) -> tuple[dict[str, float], dict[str, float]]:
    """(median latency, median per-round speed-up over ``reference``) per variant."""
    latency = {name: statistics.median(values) for name, values in best.items()}
    speedup = {name: statistics.median(r / v for r, v in zip(best[reference], values, strict=True))
               for name, values in best.items()}
    return latency, speedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56,mobilenetv2")
    parser.add_argument("--threads", type=int, default=1, help="XNNPACK threads (and torch threads)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=5, help="calls per variant per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--int8", action="store_true", help="add int8 twins of dense and the realized variants")
    parser.add_argument("--image-size", type=int, default=32,
                        help="input size in pixels (default 32). int8 at 32 px is mostly XNNPACK's per-operator cost "
                             "(ResNet-20 runs in ~0.1 ms), which no deployment at camera resolution sees")
    parser.add_argument("--width", type=float, default=1.0,
                        help="channel multiplier of the zoo models (default 1: ResNet-20 has 16-64 channels). An "
                             "exact kernel mix splits a layer into one conv per pattern, so its convs are ~1/8 as "
                             "wide as the layer: at width 1 each fills a fraction of XNNPACK's 16-wide tile")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(args.threads)
    size = args.image_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows, int8_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            variants = build_variants(name, x, args.width)
            if args.int8:
                variants += [Variant(v.name + " int8", v.module, v.macs, v.nonzero_macs, v.padded_macs, v.notes,
                                     int8=True) for v in variants if not v.name.startswith("masks-only")]
            calibration = [(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(i)),)
                           for i in range(8)]
            for v in variants:
                start = time.perf_counter()
                kwargs = {"quantize": True, "calibration": calibration} if v.int8 else {}
                v.path = export_pte(v.module, (x,), Path(tmp) / f"{name}-{len(rows)}-{v.name[:8]}.pte", **kwargs).path
                v.export_s = time.perf_counter() - start
                rows.append(None)
                print(f"[{name}] exported {v.name} in {v.export_s:.1f}s", file=sys.stderr, flush=True)
            best = time_interleaved(variants, x, rounds=args.rounds, calls=args.calls, warmup=args.warmup)
            medians, speedups = summarize(best, "dense")
            dense = variants[0]
            if args.int8:
                int8_rows.extend(_int8_rows(name, variants, best, speedups))
            for v in variants:
                if v.int8:
                    continue
                mac_ratio = dense.macs / v.macs
                speedup = speedups[v.name]
                realized = v.name not in ("dense",) and not v.name.startswith("masks-only")
                verdict = ("PASS" if speedup >= 0.8 * mac_ratio else "MISS") if realized else "-"
                rows.append((name, v.name, v.nonzero_macs / 1e6, v.macs / 1e6, v.padded_macs / 1e6,
                             1 - v.nonzero_macs / dense.macs, medians[v.name], speedup, mac_ratio, verdict,
                             v.export_s, len(v.notes)))
    rows = [r for r in rows if r is not None]
    int8_table(int8_rows, args)
    print(f"\nExecuTorch {_version('executorch')} / XNNPACK, {args.threads} thread(s), "
          f"input 1x3x{size}x{size}, width {args.width:g}, "
          f"{args.rounds} interleaved rounds of {args.calls} calls per variant (fastest call per round; median "
          f"over rounds; speed-up = median of per-round ratios) after {args.warmup} warm-up calls")
    header = ("model", "variant", "nz MMACs", "exec MMACs", f"NR={NR} MMACs", "MAC cut", "median ms", "speed-up",
              "MAC ratio", ">=0.8x?", "export s", "notes")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.0%} | {r[6]:.3f} | {r[7]:.2f}x | "
              f"{r[8]:.2f}x | {r[9]} | {r[10]:.1f} | {r[11]} |")
    return 0


def _int8_rows(name: str, variants: list[Variant], best: dict[str, list[float]],
               vs_fp32: dict[str, float]) -> list[tuple]:
    """One row per realized variant: its int8 twin against dense int8 and against dense fp32."""
    _, vs_int8 = summarize(best, "dense int8")
    dense = variants[0]
    rows = [(name, "dense", dense.macs / 1e6, 0.0, 1.0, 1.0, 1.0, vs_fp32["dense int8"], "-", "-")]
    for v in variants:
        if v.int8 or v.name == "dense" or v.name.startswith("masks-only"):
            continue
        twin = v.name + " int8"
        mac_ratio = dense.macs / v.macs
        quant_alone, prune_alone, both = vs_fp32["dense int8"], vs_fp32[v.name], vs_fp32[twin]
        rows.append((name, v.name, v.macs / 1e6, 1 - v.nonzero_macs / dense.macs, mac_ratio, vs_int8[twin],
                     prune_alone, both, "PASS" if vs_int8[twin] >= 0.7 * mac_ratio else "MISS",
                     "PASS" if both > max(quant_alone, prune_alone) else "MISS"))
    return rows


def int8_table(rows: list[tuple], args: argparse.Namespace) -> None:
    if not rows:
        return
    print(f"\nint8 (PT2E, XNNPACK quantizer, per-channel weights) timed in the same interleaved rounds as fp32, "
          f"{args.threads} thread(s)")
    header = ("model", "variant", "exec MMACs", "MAC cut", "MAC ratio", "int8 vs dense int8", "fp32 vs dense fp32",
              "int8 vs dense fp32", ">=0.7x MAC?", "beats both?")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.0%} | {r[4]:.2f}x | {r[5]:.2f}x | {r[6]:.2f}x | {r[7]:.2f}x | "
              f"{r[8]} | {r[9]} |")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
