"""The input pipeline a trained model expects, written down so that a deployed artifact can be fed.

Every dataset reaches a model the same way (``host.data.load_dataset``): uint8 images, their channels
converted, resized to a square, scaled to [0, 1] and normalized per channel with the training split's
mean and std. :class:`Preprocessing` records those steps and their constants; ``to_dict`` is what
``result.json`` and the ``final-N.json`` / ``<artifact>.json`` sidecars hold, and :meth:`Preprocessing.apply`
runs the same code the search trained and scored with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from host.errors import DataError

SCHEMA_VERSION = 1

# how each source resizes and converts channels (host.data.sources / host.data.transforms)
_TORCH_RESIZE = {
    "method": "bilinear", "antialias": True, "align_corners": False,
    "implementation": "torch.nn.functional.interpolate on the uint8 image as float, then rounded and clamped to "
                      "uint8 [0, 255]",
}
_PIL_RESIZE = {
    "method": "bilinear", "antialias": True, "align_corners": False,
    "implementation": "PIL.Image.resize(size, Image.BILINEAR) on load, after the mode conversion",
}
_TORCH_CHANNELS = {"1->3": "replicate the grey channel", "3->1": "mean of R, G, B, rounded to uint8"}
_PIL_CHANNELS = {"1->3": "PIL Image.convert('RGB')", "3->1": "PIL Image.convert('L') (ITU-R 601-2 luma)"}


@dataclass(frozen=True)
class Preprocessing:
    """From a uint8 image to the float32 tensor the model takes (NCHW, batch first)."""

    dataset: str
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    @classmethod
    def from_splits(cls, splits: Any) -> Preprocessing:
        channels, size, _ = splits.input_shape
        return cls(dataset=splits.name, channels=int(channels), image_size=int(size),
                   mean=tuple(float(v) for v in splits.mean), std=tuple(float(v) for v in splits.std),
                   class_names=tuple(str(n) for n in splits.class_names))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        pil = self.dataset == "imagefolder"
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "input": {"shape": list(self.input_shape), "dtype": "float32", "layout": "NCHW"},
            "steps": [
                {"op": "channels", "to": self.channels, **(_PIL_CHANNELS if pil else _TORCH_CHANNELS)},
                {"op": "resize", "size": [self.image_size, self.image_size], **(_PIL_RESIZE if pil else _TORCH_RESIZE)},
                {"op": "scale", "factor": 1 / 255},
                {"op": "normalize", "mean": list(self.mean), "std": list(self.std),
                 "formula": "x[c] = (x[c] - mean[c]) / std[c]"},
            ],
            "output": {"kind": "logits", "num_classes": len(self.class_names), "class_names": list(self.class_names),
                       "decode": "argmax over the last axis (softmax for probabilities)"},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        try:
            steps = {step["op"]: step for step in data["steps"]}
            _, channels, size, _ = data["input"]["shape"]
            return cls(dataset=str(data["dataset"]), channels=int(channels), image_size=int(size),
                       mean=tuple(float(v) for v in steps["normalize"]["mean"]),
                       std=tuple(float(v) for v in steps["normalize"]["std"]),
                       class_names=tuple(str(n) for n in data["output"]["class_names"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a preprocessing record: {exc!r}",
                            hint="pass the 'preprocessing' object of a result.json or sidecar written by sculpt-host") from None

    def apply(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) of any size and 1 or 3 channels -> the model's float32 input."""
        from host.data.transforms import adapt_images

        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"expected uint8 images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}",
                            hint="decode the images to uint8 and put the channel axis second")
        x = adapt_images(images, image_size=self.image_size, channels=self.channels).float() / 255.0
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std
