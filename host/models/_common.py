"""Small helpers shared by the zoo architectures."""

from __future__ import annotations


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (at least ``divisor``).

    Rounding to a multiple keeps widths friendly to vectorized kernels (XNNPACK likes multiples of 8)
    and never rounds down by more than 10%, as in the MobileNet papers.
    """
    value = channels * width
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return max(1, rounded)
