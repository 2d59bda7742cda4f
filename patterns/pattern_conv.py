"""The realized form of a kernel-pattern layer: :class:`PatternConv`, dense sub-convs over kept windows.

Holds the module and what it needs to exist and run: :class:`FilterShape` (one filter's kept window, the
unit :func:`patterns.kernel.assign_shapes` hands out and :mod:`patterns.kernel_rewrite` groups into
sub-convs), :data:`DROPPED`, and the geometry of off-centre windows (zero-padded input, or symmetric
padding and a slice, :data:`MAX_EXTRA_OUTPUT`). The family that decides the shapes is :mod:`patterns.kernel`; the rewrite that
builds a PatternConv from a masked conv is :mod:`patterns.kernel_rewrite`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# An off-centre window that must skip input rows or columns (e.g. a 3x3 kernel's top row alone never reads
# the last input row) runs as ONE conv with symmetric padding whose extra border outputs are sliced off,
# unless that computes more than this many times the needed outputs; then the input is cropped/padded (an
# input copy per window cost more than the extra border rows). Other windows read a zero-padded input.
MAX_EXTRA_OUTPUT = 1.5


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


def symmetric_padding(size: int, start: int, out: int, window: int, stride: int) -> tuple[int, int, int] | None:
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


class _Window(NamedTuple):
    """How :class:`PatternConv` computes one window's ``out_h`` x ``out_w`` outputs (``computed``: the conv's own
    output size, larger than that when border outputs are sliced off). ``mode``:

    - ``"pad"``: the window reads no input row or column it must skip; ``where`` = (left, right, top, bottom)
      zero padding of the input, then the conv without padding, exact. XNNPACK folds a zero pad into the conv's
      per-side padding (fp32, and int8 with :func:`host.export.int8.pads_into_convs`); symmetric padding is
      the conv's own;
    - ``"slice"``: the window skips input rows or columns at a border (e.g. only the top row of a 3x3 kernel
      never reads the last input row): a conv with symmetric padding ``where`` whose outputs from ``first`` on
      are kept;
    - ``"crop"``: ``where`` = (top, bottom, left, right) input rows/cols to crop and pad, when the slice would
      compute more than :data:`MAX_EXTRA_OUTPUT` times the outputs.
    """

    out_h: int
    out_w: int
    mode: str
    where: tuple[int, ...]
    computed: tuple[int, int]
    first: tuple[int, int] = (0, 0)


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

    def _geometry(self, height: int, width: int, conv: nn.Conv2d, r0: int, c0: int) -> _Window:
        """How one window is computed on a ``height`` x ``width`` input (:class:`_Window`)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h = (height + 2 * ph - kh) // sh + 1
        out_w = (width + 2 * pw - kw) // sw + 1
        wh, ww = conv.kernel_size
        # Rows [top, bottom) and cols [left, right) of the unpadded input that the window reads (may stick out
        # on either side)
        top = r0 - ph
        left = c0 - pw
        bottom = top + sh * (out_h - 1) + wh
        right = left + sw * (out_w - 1) + ww
        if top <= 0 and left <= 0 and bottom >= height and right >= width:  # zero padding only: exact
            return _Window(out_h, out_w, "pad", (-left, right - width, -top, bottom - height), (out_h, out_w))
        rows = symmetric_padding(height, top, out_h, wh, sh)
        cols = symmetric_padding(width, left, out_w, ww, sw)
        if rows is not None and cols is not None and rows[2] * cols[2] <= MAX_EXTRA_OUTPUT * out_h * out_w:
            return _Window(out_h, out_w, "slice", (rows[0], cols[0]), (rows[2], cols[2]), (rows[1], cols[1]))
        return _Window(out_h, out_w, "crop", (top, bottom, left, right), (out_h, out_w))

    def computed_positions(self, height: int, width: int) -> list[int]:
        """Output positions each sub-conv really computes on a ``height`` x ``width`` input, including the
        border outputs that an off-centre window computes and slices off (not part of the exact MAC count)."""
        return [math.prod(self._geometry(height, width, conv, r0, c0).computed)
                for conv, (r0, c0) in zip(self.convs, self.windows, strict=True)]

    def _branch(self, x: Tensor, conv: nn.Conv2d, r0: int, c0: int) -> Tensor:
        height, width = x.shape[-2], x.shape[-1]
        window = self._geometry(height, width, conv, r0, c0)
        if window.mode == "pad":
            left, right, top, bottom = window.where
            if left == right and top == bottom:
                return F.conv2d(x, conv.weight, conv.bias, self.stride, (top, left))
            return F.conv2d(F.pad(x, window.where), conv.weight, conv.bias, self.stride, 0)
        if window.mode == "slice":
            y = F.conv2d(x, conv.weight, conv.bias, self.stride, window.where)
            (first_h, first_w), (out_h, out_w) = window.first, (window.out_h, window.out_w)
            if window.first != (0, 0) or window.computed != (out_h, out_w):
                y = y[:, :, first_h:first_h + out_h, first_w:first_w + out_w]
            return y
        top, bottom, left, right = window.where
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
