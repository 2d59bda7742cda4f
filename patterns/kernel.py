"""Kernel patterns on k x k convolutions (the paper's family, with per-layer control).

Per filter, a shape keeps a sub-rectangle of the kernel: the paper's six choices on 3x3 are drop, keep 1
column, keep 1 row, keep 2 columns, keep 2 rows, keep all. A layer's pattern is a *mix*: a share of the
filters for each shape, heaviest shapes to the filters with the smallest L2 norm. ``ratio`` (default 1)
is the share of filters (smallest norm first) that receive the mix; the rest stay whole. Per layer and
shape, the kept window (which row/column) is the one keeping the most weight energy over the filters that
got that shape, so one shape gives one dense sub-conv.

Hardware-aligned granularity (``params.tile``, default 1 = the exact mix; 16 for ``paper6_tiled``): the
number of filters per shape (and the affected share) is rounded to a multiple of ``tile`` (a layer
narrower than ``tile`` counts as one tile, so it takes a single shape). Private layers
still rank single filters; shared layers (residual adds) rank contiguous blocks of ``tile`` filters by
their summed energy, so each shape covers whole runs of channels and the layer keeps its channel order.

Realization: filters sharing a shape become one dense k1 x k2 conv reading the input at the right offset
(worked out per window, stride included); the sub-convs' outputs are concatenated. An off-centre window
reads a zero-padded input (``conv(pad(x))``, exact; XNNPACK folds the pad into the conv's per-side
padding), unless it skips a border row or column of the input (a 3x3 kernel's top row alone): then it
runs as one conv with symmetric padding whose surplus border outputs are sliced off
(:class:`patterns.pattern_conv.PatternConv`). When the layer's channels are private (one producer, consumed by plain convs through
BN/activations) the new channel order and the dropped filters are folded into the BN and the consumers'
input weights. When they are shared, a tiled layer emits its runs in channel order (dropped runs become
zero channels in the concat); an exact-mix layer re-orders the whole group if it is the group's first
pattern layer and no tiled layer shares the group, else pays an explicit gather. ``patdnn4`` (PatDNN-style 4-entry patterns) has no dense
form: it stays a mask and realization says so.

This module holds the family and the shape assignment; the realized module is
:class:`patterns.pattern_conv.PatternConv` and the rewrite that builds it (folds, re-orders, gathers) is
:class:`patterns.kernel_rewrite.KernelRewrite`.

Why tiles (measured with ExecuTorch 1.4.1 / XNNPACK on this AVX-512 machine, 1 thread, one 3x3 layer
with 16 in/out channels on 32x32): XNNPACK's f32 IGEMM micro-kernels compute 16 output channels at a
time (NR = 16 with AVX-512, 8 on NEON), so the exact mix's five sub-convs of 2-3 filters each cost a full
16-wide tile: 27 vs 9 kernel-taps x 16 channels, 3x the dense work for half the MACs. Measured: dense
46 us, exact paper6 167 us, tile 8 (two 8-filter sub-convs, still half-empty tiles) 56 us, one 16-filter
window 18-34 us. On 64 channels at 8x8 the exact mix ran 55 us vs 54 dense, of which ~14 us were per-window
input crop/pad copies (a slice + pad per off-centre window, each a full copy of the input); slicing the
conv output instead cut a 2x3 off-centre window from 16.6 to 10.8 us. Gathers (index_select, not
delegated) split the ResNet-20 graph into 7 XNNPACK partitions. ``benchmarks/realize_bench.py`` has
the whole-model table.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from patterns.errors import PlanError
from patterns.family import (
    Context,
    Decision,
    Family,
    count_for_ratio,
    stable_order,
    weight_key,
)
from patterns.kernel_rewrite import KernelRewrite
from patterns.pattern_conv import DROPPED, FilterShape
from patterns.plan import LayerAssignment
from patterns.structure import CoupledGroup

log = logging.getLogger(__name__)

# Shape ids, heaviest first. (rows, cols) of the kept window as a function of the kernel size; None = drop.
SHAPES = ("drop", "col1", "row1", "col2", "row2", "full")

# Pattern -> ((shape, share of the affected filters), ...), heaviest shape first.
MIXES: dict[str, tuple[tuple[str, float], ...]] = {
    "row2": (("row2", 1.0),),
    "col2": (("col2", 1.0),),
    "row1": (("row1", 1.0),),
    "col1": (("col1", 1.0),),
    "rowcol": (("col1", 0.25), ("row1", 0.25), ("col2", 0.25), ("row2", 0.25)),
    "paper6": tuple((shape, 1 / 6) for shape in SHAPES),
    "paper6_tiled": tuple((shape, 1 / 6) for shape in SHAPES),  # the same mix, on whole tiles by default
}
MASK_ONLY = ("patdnn4",)
# Default ``params.tile`` per pattern (1 = exact share per filter, as in the paper).
# 16 is a multiple of every XNNPACK f32 GEMM tile width we know (NR = 8 on NEON/SSE, 16 on AVX2/AVX-512).
DEFAULT_TILE: dict[str, int] = {"paper6_tiled": 16}
# Patterns added after the vocabulary was first fixed: the registry appends them at its very end.
APPENDED = ("paper6_tiled",)
# The exact per-filter mixes: several shapes in one layer, a few filters each (tile 1). Their sub-convs leave
# XNNPACK's output-channel tiles part-empty, so they run at 0.5-0.7x of their MAC ratio (realize_bench.py), and an
# int8 export of one takes 4-6x as long as of any other plan; int8 searches leave them out (host.search.space).
EXACT_MIXES = tuple(p for p, mix in MIXES.items() if len(mix) > 1 and DEFAULT_TILE.get(p, 1) == 1)


def _tile(layer: str, assignment: LayerAssignment) -> int:
    """The assignment's ``params.tile`` (filters per shape rounded to multiples of it), checked."""
    params = dict(assignment.params)
    unknown = sorted(set(params) - {"tile"})
    if unknown:
        raise PlanError(f"layer '{layer}': kernel patterns take no params {unknown}",
                        hint='the kernel family knows only "tile", e.g. "params": {"tile": 16}')
    tile = params.get("tile", DEFAULT_TILE.get(assignment.pattern, 1))
    if isinstance(tile, bool) or not isinstance(tile, int | float) or tile != int(tile) or tile < 1:
        raise PlanError(f"layer '{layer}': params.tile must be a positive integer, got {tile!r}",
                        hint="1 keeps the exact mix; 8 or 16 match XNNPACK's output-channel tiles")
    return int(tile)


def _window(shape: str, kh: int, kw: int) -> tuple[int, int]:
    return {"col1": (kh, 1), "row1": (1, kw), "col2": (kh, 2), "row2": (2, kw), "full": (kh, kw)}[shape]


def _patdnn_library(kh: int, kw: int) -> list[Tensor]:
    """The four 4-entry patterns of PatDNN on 3x3: the centre plus three of its four direct neighbours."""
    centre = (kh // 2, kw // 2)
    neighbours = [(centre[0] - 1, centre[1]), (centre[0], centre[1] + 1), (centre[0] + 1, centre[1]),
                  (centre[0], centre[1] - 1)]
    library = []
    for skip in range(4):
        mask = torch.zeros(kh, kw, dtype=torch.bool)
        mask[centre] = True
        for index, (r, c) in enumerate(neighbours):
            if index != skip:
                mask[r, c] = True
        library.append(mask)
    return library


def _best_offset(energy: Tensor, kh: int, kw: int) -> tuple[int, int]:
    """Window offset keeping the most energy; ties go to the window closest to the centre, then top-left."""
    full_h, full_w = energy.shape
    best: tuple[float, int, int, int] | None = None
    for r0 in range(full_h - kh + 1):
        for c0 in range(full_w - kw + 1):
            score = float(energy[r0:r0 + kh, c0:c0 + kw].sum())
            off_centre = abs(2 * r0 + kh - full_h) + abs(2 * c0 + kw - full_w)
            key = (-score, off_centre, r0, c0)
            if best is None or key < best:
                best = key
    assert best is not None  # kh <= full_h and kw <= full_w by construction
    return best[2], best[3]


def aligned_count(share: float, total: int, tile: int) -> int:
    """How many of ``total`` filters a share selects, rounded to a multiple of ``tile`` (round half up).

    ``tile == 1`` is :func:`~patterns.family.count_for_ratio`; a whole share (>= 1) always selects ``total``,
    so a layer whose width is not a multiple of ``tile`` puts the remainder into its last group.
    """
    if tile == 1 or share >= 1.0:
        return count_for_ratio(total, min(share, 1.0))
    return min(total, tile * int(share * total / tile + 0.5 + 1e-9))


def assign_shapes(weight: Tensor, pattern: str, ratio: float, *, tile: int = 1,
                  blocks: bool = False) -> list[FilterShape]:
    """Per-filter kept windows for a rectangular mix (deterministic in the weights).

    ``tile`` rounds the number of filters per shape (and the affected share) to multiples of ``tile``.
    ``blocks`` assigns shapes to contiguous blocks of ``tile`` filters instead of single filters, the blocks
    ranked by their summed energy (smallest first, heaviest shapes to them), so every shape covers whole
    runs of adjacent channels and the realized layer emits its channels in the original order.
    """
    out_ch, _, kh, kw = weight.shape
    energy_all = weight.detach().double().pow(2).sum(dim=1)  # (out, kh, kw)
    norms = weight.detach().double().pow(2).sum(dim=(1, 2, 3))
    if blocks and tile > 1:
        units = [list(range(start, min(start + tile, out_ch))) for start in range(0, out_ch, tile)]
        unit_norms = torch.stack([norms[unit].sum() for unit in units])
        affected = stable_order(unit_norms)[:count_for_ratio(len(units), ratio)]

        def split(share: float) -> int:
            return count_for_ratio(len(affected), share)
    else:
        units = [[f] for f in range(out_ch)]
        affected = stable_order(norms)[:aligned_count(ratio, out_ch, tile)]

        def split(share: float) -> int:
            return aligned_count(share, len(affected), tile)
    shapes = [FilterShape(0, 0, kh, kw)] * out_ch
    by_shape: dict[str, list[int]] = {}
    start = 0
    cumulative = 0.0
    for shape, share in MIXES[pattern]:
        cumulative += share
        stop = min(len(affected), split(min(cumulative, 1.0)))
        by_shape[shape] = [f for unit in affected[start:stop] for f in units[unit]]
        start = stop
    for shape, filters in by_shape.items():
        if not filters:
            continue
        if shape == "drop":
            for f in filters:
                shapes[f] = DROPPED
            continue
        wh, ww = _window(shape, kh, kw)
        r0, c0 = _best_offset(energy_all[filters].sum(dim=0), wh, ww)
        for f in filters:
            shapes[f] = FilterShape(r0, c0, wh, ww)
    return shapes


class KernelFamily(Family):
    """Per-filter kernel shapes on k x k convs (k >= 2, groups == 1)."""

    name = "kernel"
    description = "per-filter kernel sub-rectangles (paper's six 3x3 choices) and PatDNN 4-entry patterns"

    def patterns(self) -> tuple[str, ...]:
        return (*[p for p in MIXES if p not in APPENDED], *MASK_ONLY, *APPENDED)

    def appended_patterns(self) -> tuple[str, ...]:
        return APPENDED

    def check_params(self, layer: str, assignment: LayerAssignment) -> None:
        _tile(layer, assignment)

    def applies_to(self, module: nn.Module, *, role: str = "") -> bool:
        return (isinstance(module, nn.Conv2d) and module.groups == 1 and min(module.kernel_size) >= 2
                and module.dilation == (1, 1) and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))

    def choices(self, module: nn.Module, *, role: str = "", group: CoupledGroup | None = None) -> list[str]:
        if not self.applies_to(module, role=role):
            return []
        square3 = tuple(module.kernel_size) == (3, 3)
        return [p for p in self.patterns() if p != "patdnn4" or square3]

    def decide(self, ctx: Context, layer: str, assignment: LayerAssignment) -> Decision:
        self.check_pattern(layer, assignment)
        conv = ctx.module(layer)
        if not self.applies_to(conv):
            raise PlanError(f"layer '{layer}' ({type(conv).__name__}) cannot take kernel patterns",
                            hint="kernel patterns need a Conv2d with groups=1, kernel >= 2x2, no dilation")
        ratio = 1.0 if assignment.ratio is None else assignment.ratio
        weight = conv.weight.detach()
        if assignment.pattern == "patdnn4":
            return self._decide_patdnn(conv, layer, weight, ratio)
        tile = min(_tile(layer, assignment), conv.out_channels)  # a layer narrower than a tile is one tile
        # Whether the layer's channels are private decides both the masks of dropped filters (the whole
        # group goes) and fold-vs-gather, so it needs the coupling: Context raises without an example input.
        private = ctx.group(layer)[1].private
        # A shared layer cannot fold a per-filter order downstream; with tiles it keeps contiguous blocks.
        blocks = tile > 1 and not private
        shapes = assign_shapes(weight, assignment.pattern, ratio, tile=tile, blocks=blocks)
        dropped = [f for f, s in enumerate(shapes) if s.dropped]
        if len(dropped) == len(shapes):
            raise PlanError(f"layer '{layer}': kernel pattern '{assignment.pattern}' with ratio {ratio} drops "
                            f"all {len(shapes)} filters", hint="lower the ratio or pick a pattern without 'drop'")
        mask = torch.zeros_like(weight, dtype=torch.bool)
        for f, s in enumerate(shapes):
            if not s.dropped:
                mask[f, :, s.r0:s.r0 + s.kh, s.c0:s.c0 + s.kw] = True
        masks = {weight_key(layer): mask}
        if conv.bias is not None:
            masks[weight_key(layer, "bias")] = torch.tensor([not s.dropped for s in shapes])
        removals: tuple[tuple[str, tuple[int, ...]], ...] = ()
        if dropped and private:
            for key, group_mask in ctx.group_masks(layer, dropped).items():
                masks[key] = masks[key] & group_mask if key in masks else group_mask
            removals = ((layer, tuple(dropped)),)
        plan = KernelRewrite(layer, shapes, private, in_order=blocks)
        return Decision(masks, removals, ((20, plan.fold), (22, plan.pin), (25, plan.fold_shared),
                                          (30, plan.replace)))

    def _decide_patdnn(self, conv: nn.Conv2d, layer: str, weight: Tensor, ratio: float) -> Decision:
        out_ch, _, kh, kw = weight.shape
        library = _patdnn_library(kh, kw)
        energy = weight.double().pow(2).sum(dim=1)
        norms = energy.sum(dim=(1, 2))
        mask = torch.ones_like(weight, dtype=torch.bool)
        for f in stable_order(norms)[:count_for_ratio(out_ch, ratio)]:
            kept = [float(energy[f][p].sum()) for p in library]
            best = max(range(len(library)), key=lambda i: (kept[i], -i))
            mask[f] = library[best].expand_as(mask[f])
        return Decision({weight_key(layer): mask},
                        note=f"{layer}: patdnn4 has no dense form on XNNPACK; realized as a masked dense conv")
