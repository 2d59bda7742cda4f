"""Resizing and channel adaptation so that any zoo model can train on any dataset."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from host.errors import DataError


def adapt_images(images: Tensor, *, image_size: int, channels: int) -> Tensor:
    """Resize uint8 (N, C, H, W) images to ``image_size`` squared and convert to ``channels``.

    Grayscale is replicated to 3 channels; colour is averaged down to 1. Other channel changes are refused.
    """
    if image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}", hint="pass e.g. image_size=32")
    have = images.shape[1]
    if have != channels:
        if have == 1:
            images = images.expand(-1, channels, -1, -1)
        elif channels == 1:
            images = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
        else:
            raise DataError(f"cannot convert {have}-channel images to {channels} channels",
                            hint="use channels=1 or channels=3, or the dataset's own channel count")
    if images.shape[-2:] != (image_size, image_size):
        out = []
        # chunks bound the float copy for big datasets such as CIFAR-10
        for chunk in images.split(4096):
            resized = F.interpolate(chunk.float(), size=(image_size, image_size), mode="bilinear",
                                    align_corners=False, antialias=True)
            out.append(resized.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(out)
    return images.contiguous()


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1] (std floored to avoid dividing by 0).

    Accumulated in float64 chunks so that CIFAR-10 sized inputs never get a full float copy.
    """
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
