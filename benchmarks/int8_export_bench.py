"""What folding BatchNorm through a realized layer's slices and concats, and skipping XNNPACK's conv-BN
annotation patterns on graphs without BatchNorm, buy an int8 export (host.export.fold, host.export.int8).

For ResNet-20 (MNIST-sized, 16 px, random init with non-trivial BN statistics) dense and realized plans of
several families, exports the same module side by side in one run with both changes ("now") and with both
turned off ("before": BN folded only when it directly follows a conv, every quantizer pattern traced). Prints
per export: seconds (quantize, total), BatchNorm ops left in the lowered graph's source, and the median latency
of the int8 .pte in the real ExecuTorch runtime (one thread, interleaved runs).

    .venv/bin/python benchmarks/int8_export_bench.py [--runs 200] [--fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@contextlib.contextmanager
def _before():
    """The exporter as it was: fold only conv -> BN, XNNPACK's quantizer with all its patterns."""
    import host.export.fold as fold
    import host.export.int8 as int8

    saved = fold._behind_spatial_slices, fold._is_channel_cat, int8._skip_absent_batchnorm_patterns
    fold._behind_spatial_slices = lambda node: node
    fold._is_channel_cat = lambda node: False
    int8._skip_absent_batchnorm_patterns = lambda quantizer, model: None
    try:
        yield
    finally:
        fold._behind_spatial_slices, fold._is_channel_cat, int8._skip_absent_batchnorm_patterns = saved


def _bn_left(module, x) -> int:
    import torch

    from host.export.fold import fold_batchnorm
    from host.export.pte import _Named

    with torch.no_grad():
        program, _ = fold_batchnorm(torch.export.export(_Named(module).eval(), (x,)), (x,))
    return sum(1 for n in program.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per artifact and round (200)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fp32", action="store_true", help="also export fp32 (the fold applies there too)")
    args = parser.parse_args(argv)

    import torch

    import host.models.loader  # noqa: F401  (registers the torchvision ops shim first)
    import patterns
    from host.export import export_pte
    from host.export.int8 import calibration_from
    from host.models.zoo import create_model
    from patterns import LayerAssignment, Plan
    from patterns.kernel import KernelFamily

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1, image_size=16).eval()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.randn(1, 1, 16, 16)
    calibration = calibration_from(torch.randn(16, 1, 16, 16), 16)
    family = KernelFamily()
    convs = [n for n in patterns.prunable_layers(model) if family.applies_to(model.get_submodule(n))][1:]
    variants = {"dense": Plan(())}
    for pattern in ("row2", "paper6_tiled", "paper6"):  # every 3x3 conv but the stem
        variants[f"kernel {pattern}"] = Plan.from_mapping({n: LayerAssignment("kernel", pattern) for n in convs})
    precisions = [True, False] if args.fp32 else [True]
    rows, artifacts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, plan in variants.items():
            module = patterns.realize(model, plan, x).eval() if plan.layers else model
            for quantize in precisions:
                for arm in ("before", "now"):
                    with _before() if arm == "before" else contextlib.nullcontext():
                        bn = _bn_left(module, x)
                        start = time.perf_counter()
                        artifact = export_pte(module, (x,), Path(tmp) / f"{len(rows)}.pte", quantize=quantize,
                                              calibration=calibration if quantize else None, cache=False)
                        seconds = time.perf_counter() - start
                    rows.append({"variant": label, "precision": "int8" if quantize else "fp32", "arm": arm,
                                 "seconds": seconds, "quantize_s": dict(artifact.timings).get("quantize", 0.0),
                                 "bn_left": bn})
                    artifacts[len(rows) - 1] = artifact.path
                    print(f"exported {label} {rows[-1]['precision']} {arm}: {seconds:.1f} s", file=sys.stderr, flush=True)
        from executorch.runtime import Runtime

        methods = {i: Runtime.get().load_program(Path(p)).load_method("forward") for i, p in artifacts.items()}
        times: dict[int, list[float]] = {i: [] for i in methods}
        for _ in range(args.rounds):
            for i, method in methods.items():
                for _ in range(10):
                    method.execute([x])
                start = time.perf_counter()
                for _ in range(args.runs):
                    method.execute([x])
                times[i].append((time.perf_counter() - start) / args.runs * 1e3)
    print(f"\nResNet-20 (16 px), export side by side in one run, latency median of {args.rounds} interleaved rounds "
          f"x {args.runs} runs, 1 thread\n")
    print("| variant | precision | arm | export s | quantize s | BN ops left | p50 ms | export speed-up | latency ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        ms = statistics.median(times[i])
        if row["arm"] == "before":
            before_s, before_ms = row["seconds"], ms
            gain, ratio = "-", "-"
        else:
            gain, ratio = f"{before_s / row['seconds']:.2f}x", f"{before_ms / ms:.2f}x"
        print(f"| {row['variant']} | {row['precision']} | {row['arm']} | {row['seconds']:.1f} | {row['quantize_s']:.1f} "
              f"| {row['bn_left']} | {ms:.4f} | {gain} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
