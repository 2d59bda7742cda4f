"""How often a projected plan lands in the FLOPs reward band: the cost model's linear walk alone against the walk
corrected by exact MAC counts (``project(exact=SearchSpace.mac_ratio)``), on prior plans of zoo models.

For each model and target, ``--plans`` plans are drawn from the prior calibrated to the target (as a search
draws its first proposals), projected both ways into the band the FLOPs search uses (target +- 0.05 of dense
MACs) and counted exactly. Prints one table: plans inside the band, mean exact ratio, exact counts per plan
(mean and max) and the projection's wall time per plan. Nothing is trained or exported (~1 min).

    .venv/bin/python benchmarks/projection_bench.py [--models resnet20:0.2,mobilenetv2:0.5,resnet56:0.5] [--plans 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from host.models.loader import load_model  # noqa: E402
from host.search.costmodel import CostModel  # noqa: E402
from host.search.projection import TargetBand, calibrate_keep_logit, project, sample_prior  # noqa: E402
from host.search.reward import FLOPS_BAND  # noqa: E402
from host.search.space import SearchSpace  # noqa: E402


class Counted:
    """``space.mac_ratio`` that counts its calls."""

    def __init__(self, space: SearchSpace) -> None:
        self.space, self.calls = space, 0

    def __call__(self, choices: np.ndarray) -> float | None:
        self.calls += 1
        return self.space.mac_ratio(choices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20:0.2,mobilenetv2:0.5,resnet56:0.5",
                        help="zoo name:target MAC ratio (0.2 = an 0.8 MAC cut), comma-separated")
    parser.add_argument("--plans", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=16)
    args = parser.parse_args(argv)
    header = ("model", "target ratio", "projection", "in band", "mean exact ratio", "exact counts/plan (max)",
              "s/plan")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for item in args.models.split(","):
        name, target = item.split(":")
        target = float(target)
        torch.manual_seed(0)
        model = load_model(name, num_classes=10, in_channels=1).eval()
        space = SearchSpace(model, torch.randn(1, 1, args.image_size, args.image_size), name=name)
        costs = CostModel.from_space(space)
        band = TargetBand(target, FLOPS_BAND, exact=True).for_model(costs)
        logit = calibrate_keep_logit(space.choice_mask, space.keep_index, costs, target)
        uniforms = np.random.default_rng(0).random((args.plans, len(space.layer_names)))
        starts = [sample_prior(space.choice_mask, space.keep_index, logit, u) for u in uniforms]
        # exact first: its time is not helped by counts the table makes of the cost model's plans (memoized)
        for label, exact in (("exact-corrected", True), ("cost model", False)):
            ratios, counts, seconds = [], [], 0.0
            for k, start in enumerate(starts):
                counted = Counted(space)
                begin = time.perf_counter()
                out = project(start, space.choice_mask, costs, band, np.random.default_rng(k),
                              exact=counted if exact else None)
                seconds += time.perf_counter() - begin
                ratios.append(space.mac_ratio(out))
                counts.append(counted.calls)
            valid = [r for r in ratios if r is not None]
            inside = sum(band.low <= r <= band.high for r in valid)
            lines.append(f"| {name} | {target:.2f} | {label} | {inside}/{len(ratios)} | {statistics.mean(valid):.3f} | "
                         f"{statistics.mean(counts):.1f} ({max(counts)}) | {seconds / len(starts):.2f} |")
            print(f"[{name}] {label} done", file=sys.stderr, flush=True)
    print(f"\nprior plans projected into the FLOPs band (target +- {FLOPS_BAND}); the cost model's projection "
          "counts nothing exactly (its column shows 0), the exact count is done after it for the table")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
