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
runs as one conv with symmetric padding whose surplus border outputs are sliced off (XNNPACK pads only
symmetrically). When the layer's channels are private (one producer, consumed by plain convs through
BN/activations) the new channel order and the dropped filters are folded into the BN and the consumers'
input weights. When they are shared, a tiled layer emits its runs in channel order (dropped runs become
zero channels in the concat); an exact-mix layer re-orders the whole group if it is the group's first
pattern layer and no tiled layer shares the group, else pays an explicit gather. ``patdnn4`` (PatDNN-style 4-entry patterns) has no dense
form: it stays a mask and realization says so.

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
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patterns.errors import PlanError
from patterns.family import (
    Context,
    Decision,
    Family,
    RealizeState,
    count_for_ratio,
    stable_order,
    weight_key,
)
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
# An off-centre window runs as ONE conv with symmetric padding whose extra border outputs are sliced off,
# unless that computes more than this many times the needed outputs; then the input is cropped/padded
# (XNNPACK pads only symmetrically, and an input copy per window cost more than the extra border rows).
MAX_EXTRA_OUTPUT = 1.5
# Default ``params.tile`` per pattern (1 = exact share per filter, as in the paper).
# 16 is a multiple of every XNNPACK f32 GEMM tile width we know (NR = 8 on NEON/SSE, 16 on AVX2/AVX-512).
DEFAULT_TILE: dict[str, int] = {"paper6_tiled": 16}
# Patterns added after the vocabulary was first fixed: the registry appends them at its very end.
APPENDED = ("paper6_tiled",)


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


@dataclass(frozen=True)
class FilterShape:
    """One filter's kept window: rows [r0, r0+kh), cols [c0, c0+kw); ``kh == 0`` means dropped."""

    r0: int
    c0: int
    kh: int
    kw: int

    @property
    def dropped(self) -> bool:
        return self.kh == 0


DROPPED = FilterShape(0, 0, 0, 0)


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


def _symmetric_padding(size: int, start: int, out: int, window: int, stride: int) -> tuple[int, int, int] | None:
    """(padding, first output index, conv output size) so that a conv with symmetric ``padding`` computes,
    from output index on, the ``out`` outputs of a window whose first read is input index ``start``.

    None when no padding up to one window plus one stride does it (e.g. the window must skip rows that
    no padding can align with the stride).
    """
    for pad in range(max(0, -start), max(0, -start) + window + stride + 1):
        if (start + pad) % stride:
            continue
        first = (start + pad) // stride
        total = (size + 2 * pad - window) // stride + 1
        if first + out <= total:
            return pad, first, total
    return None


class PatternConv(nn.Module):
    """A k x k conv rewritten as dense sub-convs, one per kept window, reading the input at an offset.

    The output is the concatenation of ``layout``'s pieces in order: an entry ``i >= 0`` is sub-conv ``i``'s
    output, an entry ``-z`` is ``z`` zero channels (dropped filters of a layer whose channels cannot be
    removed). Without ``layout``: every sub-conv in order, then ``zeros`` zero channels. ``index``
    (optional) gathers the result back into the original channel order, for layers whose order can be
    neither kept by the layout nor folded downstream.
    """

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 windows: list[tuple[int, int]], convs: list[nn.Conv2d], zeros: int = 0,
                 index: Tensor | None = None, layout: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.windows = list(windows)
        self.convs = nn.ModuleList(convs)
        if layout is None:
            layout = tuple(range(len(convs))) + ((-zeros,) if zeros else ())
        if sorted(p for p in layout if p >= 0) != list(range(len(convs))):
            raise ValueError(f"layout {layout} must name each of the {len(convs)} sub-convs once")
        self.layout = tuple(layout)
        self.zeros = sum(-p for p in self.layout if p < 0)
        if index is not None:
            self.register_buffer("index", index.to(torch.long), persistent=True)
        else:
            self.index = None

    def _geometry(self, height: int, width: int, conv: nn.Conv2d, r0: int, c0: int):
        """How one window is computed on a ``height`` x ``width`` input: (out_h, out_w, symmetric padding,
        first output row/col, conv output rows/cols) when one padded conv + output slice does it, else
        (out_h, out_w, None, (top, bottom, left, right)) for the input crop/pad path."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h = (height + 2 * ph - kh) // sh + 1
        out_w = (width + 2 * pw - kw) // sw + 1
        wh, ww = conv.kernel_size
        # Rows [top, bottom) of the unpadded input that the window reads (may stick out on either side).
        top = r0 - ph
        left = c0 - pw
        rows = _symmetric_padding(height, top, out_h, wh, sh)
        cols = _symmetric_padding(width, left, out_w, ww, sw)
        if rows is not None and cols is not None and rows[2] * cols[2] <= MAX_EXTRA_OUTPUT * out_h * out_w:
            return out_h, out_w, (rows[0], cols[0]), (rows[1], cols[1]), (rows[2], cols[2])
        bottom = top + sh * (out_h - 1) + wh
        right = left + sw * (out_w - 1) + ww
        return out_h, out_w, None, (top, bottom, left, right), (out_h, out_w)

    def computed_positions(self, height: int, width: int) -> list[int]:
        """Output positions each sub-conv really computes on a ``height`` x ``width`` input, including the
        border outputs that an off-centre window computes and slices off (not part of the exact MAC count)."""
        return [math.prod(self._geometry(height, width, conv, r0, c0)[4])
                for conv, (r0, c0) in zip(self.convs, self.windows, strict=True)]

    def _branch(self, x: Tensor, conv: nn.Conv2d, r0: int, c0: int) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        out_h, out_w, padding, first, computed = self._geometry(height, width, conv, r0, c0)
        if padding is not None:
            y = F.conv2d(x, conv.weight, conv.bias, self.stride, padding)
            if first != (0, 0) or computed != (out_h, out_w):
                y = y[:, :, first[0]:first[0] + out_h, first[1]:first[1] + out_w]
            return y
        top, bottom, left, right = first
        if top > 0 or left > 0 or bottom < height or right < width:
            x = x[:, :, max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
        pads = (max(-left, 0), max(right - width, 0), max(-top, 0), max(bottom - height, 0))
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, conv.weight, conv.bias, self.stride, 0)

    def forward(self, x: Tensor) -> Tensor:
        outs = [self._branch(x, conv, r0, c0) for conv, (r0, c0) in zip(self.convs, self.windows, strict=True)]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        size = ((x.shape[-2] + 2 * ph - kh) // sh + 1, (x.shape[-1] + 2 * pw - kw) // sw + 1)
        # Every kept filter can be gone when other layers removed the rest of a shared group's channels.
        pieces = [outs[p] if p >= 0 else x.new_zeros(x.shape[0], -p, *size) for p in self.layout]
        y = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        if self.index is not None:
            y = torch.index_select(y, 1, self.index)
        return y


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
        plan = _KernelRewrite(layer, shapes, private, in_order=blocks)
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


class _KernelRewrite:
    """Folds (private layers) and replaces one conv by a :class:`PatternConv` on the realized copy.

    ``in_order``: the shapes cover runs of adjacent channels (block assignment), so the sub-convs follow the
    channel order run by run and neither a fold nor a gather is needed.
    """

    def __init__(self, layer: str, shapes: list[FilterShape], private: bool, in_order: bool = False) -> None:
        self.layer = layer
        self.shapes = shapes
        self.private = private
        self.in_order = in_order
        self.order: list[int] | None = None

    def _runs(self, state: RealizeState) -> list[tuple[FilterShape, list[int]]]:
        """(window, current positions) of each maximal run of adjacent channels sharing a window."""
        kept = state.kept_out.get(self.layer, list(range(len(self.shapes))))
        runs: list[tuple[FilterShape, list[int]]] = []
        for position, original in enumerate(kept):
            shape = self.shapes[original]
            if runs and runs[-1][0] == shape:
                runs[-1][1].append(position)
            else:
                runs.append((shape, [position]))
        return runs

    def _branches(self, state: RealizeState) -> tuple[list[tuple[FilterShape, list[int]]], list[int]]:
        """(window, current filter positions) per sub-conv in a fixed order, and dropped positions."""
        kept = state.kept_out.get(self.layer, list(range(len(self.shapes))))
        groups: dict[FilterShape, list[int]] = {}
        dropped = []
        for position, original in enumerate(kept):
            shape = self.shapes[original]
            if shape.dropped:
                dropped.append(position)
            else:
                groups.setdefault(shape, []).append(position)
        ordered = sorted(groups.items(), key=lambda item: (item[0].kh * item[0].kw, item[0].kh, item[0].r0,
                                                           item[0].c0))
        return ordered, dropped

    def fold(self, model: nn.Module, state: RealizeState) -> None:
        if not self.private or self.in_order:
            return
        branches, dropped = self._branches(state)
        if dropped:  # private drops were removed physically before this step
            raise RuntimeError(f"{self.layer}: dropped filters survived channel removal")
        self.order = [p for _, positions in branches for p in positions]
        if self.order == sorted(self.order):
            return
        perm = torch.tensor(self.order, dtype=torch.long)
        for member in state.groups[self.layer].members:
            module = model.get_submodule(member.name)
            if member.name == self.layer:
                continue
            if isinstance(module, nn.BatchNorm2d) and member.kind == "out":
                for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
                    if tensor is not None:
                        tensor.data = tensor.data[perm].clone()
            elif isinstance(module, nn.Conv2d) and member.kind == "in" and module.groups == 1:
                module.weight.data = module.weight.data[:, perm].clone()
            else:
                raise RuntimeError(f"cannot fold channel order of {self.layer} into {member.name}")

    def pin(self, model: nn.Module, state: RealizeState) -> None:
        """A tiled shared layer keeps its group's channel order: no exact-mix layer may re-order the group
        (that would split the tiled layer's runs into many narrow sub-convs; the exact layer gathers)."""
        group = state.groups.get(self.layer)
        if self.in_order and group is not None:
            state.reordered.add(tuple(sorted(group.producers)))

    def fold_shared(self, model: nn.Module, state: RealizeState) -> None:
        """Give a shared (e.g. residual) group this layer's channel order everywhere, so no gather is paid.

        Every producer's filters, BN and consumer's input weights of the group are permuted the same way,
        which leaves the network's function unchanged; this layer's sub-convs then emit channels in group
        order. Only one layer per group can lead; other pattern layers in the group keep a gather.
        """
        if self.private or self.in_order:
            return
        group = state.groups.get(self.layer)
        key = tuple(sorted(group.producers)) if group else ()
        # A barrier group's members do not see the channels in one order (a shuffle sits between them).
        if group is None or group.barrier or key in state.reordered:
            return
        branches, dropped = self._branches(state)
        order = [p for _, positions in branches for p in positions] + dropped
        if order == sorted(order):
            return
        n = len(order)
        members = [(m, model.get_submodule(m.name)) for m in group.members]
        for member, module in members:  # check everything before touching anything
            if member.kind == "out" and isinstance(module, nn.Conv2d) and module.out_channels == n:
                continue
            if member.kind == "out" and isinstance(module, nn.BatchNorm2d) and module.num_features == n:
                continue
            if member.kind == "in" and isinstance(module, nn.Conv2d) and module.groups == 1 and \
                    module.in_channels == n:
                continue
            if member.kind == "in" and isinstance(module, nn.Linear) and module.in_features == n:
                continue
            return  # LayerNorm, concat, flatten of a spatial map...: keep the gather
        perm = torch.tensor(order, dtype=torch.long)
        for member, module in members:
            if member.kind == "out" and isinstance(module, nn.Conv2d):
                module.weight.data = module.weight.data[perm].clone()
                if module.bias is not None:
                    module.bias.data = module.bias.data[perm].clone()
                kept = state.kept_out.get(member.name, list(range(n)))
                state.kept_out[member.name] = [kept[p] for p in order]
            elif member.kind == "out":
                for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
                    if tensor is not None:
                        tensor.data = tensor.data[perm].clone()
            else:
                module.weight.data = module.weight.data[:, perm].clone()
                kept = state.kept_in.get(member.name, list(range(n)))
                state.kept_in[member.name] = [kept[p] for p in order]
        state.reordered.add(key)
        state.notes.append(f"{self.layer}: channel order of its shared group re-ordered to match (no gather)")

    def replace(self, model: nn.Module, state: RealizeState) -> None:
        conv = model.get_submodule(self.layer)
        if self.in_order:
            self._replace_in_order(model, conv, state)
            return
        branches, dropped = self._branches(state)
        windows, convs, order = [], [], []
        for shape, positions in branches:
            windows.append((shape.r0, shape.c0))
            convs.append(_sub_conv(conv, shape, positions))
            order.extend(positions)
        gather = None
        if not self.private:
            source = {p: i for i, p in enumerate(order + dropped)}
            gather = torch.tensor([source[p] for p in range(len(order) + len(dropped))], dtype=torch.long)
            if gather.equal(torch.arange(len(gather))):
                gather = None
            if gather is not None:
                state.notes.append(f"{self.layer}: channel order shared with other layers; paying a gather")
        new = PatternConv(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), windows, convs,
                          zeros=len(dropped) if not self.private else 0, index=gather)
        new.train(conv.training)
        _set_submodule(model, self.layer, new)

    def _replace_in_order(self, model: nn.Module, conv: nn.Conv2d, state: RealizeState) -> None:
        windows, convs, layout = [], [], []
        for shape, positions in self._runs(state):
            if shape.dropped:
                layout.append(-len(positions))
                continue
            layout.append(len(convs))
            windows.append((shape.r0, shape.c0))
            convs.append(_sub_conv(conv, shape, positions))
        new = PatternConv(tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), windows, convs,
                          layout=tuple(layout))
        new.train(conv.training)
        _set_submodule(model, self.layer, new)


def _sub_conv(conv: nn.Conv2d, shape: FilterShape, positions: list[int]) -> nn.Conv2d:
    """A dense conv holding filters ``positions`` of ``conv`` cut to ``shape``'s window (no padding)."""
    index = torch.tensor(positions, dtype=torch.long)
    weight = conv.weight.data[index][:, :, shape.r0:shape.r0 + shape.kh, shape.c0:shape.c0 + shape.kw]
    sub = nn.Conv2d(conv.in_channels, len(positions), (shape.kh, shape.kw), conv.stride, 0,
                    bias=conv.bias is not None)
    sub.weight.data = weight.clone().contiguous()
    if conv.bias is not None:
        sub.bias.data = conv.bias.data[index].clone()
    return sub


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
