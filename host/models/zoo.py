"""The built-in model zoo: the paper's families, defined in-house (torchvision does not import here).

Every model takes ``num_classes``, ``in_channels``, ``image_size`` and a ``width`` multiplier, so any of
them trains on any dataset of the data module. Construction is deterministic under ``torch.manual_seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from host.errors import ModelError
from host.models.mobilenet import CifarMobileNetV2
from host.models.resnet import CifarResNet
from host.models.vgg import CifarVGG
from host.models.vit import VisionTransformer

Factory = Callable[..., nn.Module]


def _resnet(depth: int, *, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    del image_size  # global pooling makes the net size-agnostic
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, width=width)


def _vgg(config: str, *, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    return CifarVGG(config, num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)


def _mobilenet(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    del image_size
    return CifarMobileNetV2(num_classes=num_classes, in_channels=in_channels, width=width)


def _vit(*, num_classes: int, in_channels: int, image_size: int, width: float) -> nn.Module:
    return VisionTransformer(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)


_FACTORIES: dict[str, Factory] = {
    "resnet20": partial(_resnet, 20),
    "resnet56": partial(_resnet, 56),
    "resnet110": partial(_resnet, 110),
    "vgg16": partial(_vgg, "vgg16"),
    "vgg19": partial(_vgg, "vgg19"),
    "mobilenetv2": _mobilenet,
    "vit_tiny": _vit,
}


def available_models() -> list[str]:
    """Names accepted by :func:`create_model`, in a stable order."""
    return list(_FACTORIES)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 width: float = 1.0) -> nn.Module:
    """Build a freshly initialised zoo model (call ``torch.manual_seed`` first for reproducible weights)."""
    factory = _FACTORIES.get(name.lower())
    if factory is None:
        raise ModelError(f"unknown model '{name}'", hint=f"available models: {', '.join(available_models())}")
    if num_classes < 1 or in_channels < 1 or image_size < 1 or width <= 0:
        raise ModelError(
            f"bad model size: num_classes={num_classes}, in_channels={in_channels}, image_size={image_size}, "
            f"width={width}",
            hint="all of them must be positive",
        )
    return factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width)
