"""MobileNetV2 (Sandler et al. 2018) with CIFAR-style strides: the stem and the second stage keep stride 1,
so a 32x32 input ends at 4x4 instead of 1x1."""

from __future__ import annotations

from torch import Tensor, nn

from host.models._common import scaled

# (expansion t, output channels c, repeats n, first stride s)
CIFAR_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                  (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, with a residual add when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(in_ch, hidden, 1))
        layers.append(_conv_bn(hidden, hidden, 3, stride, groups=hidden))
        layers.append(_conv_bn(hidden, out_ch, 1, act=False))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for small images; ``width`` is the usual width multiplier (channels rounded to 8)."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        stem = scaled(32, width, 8)
        last = scaled(1280, max(1.0, width), 8)
        blocks: list[nn.Module] = [_conv_bn(in_channels, stem, 3, 1)]
        channels = stem
        for expansion, out, repeats, stride in CIFAR_SETTINGS:
            out_ch = scaled(out, width, 8)
            for index in range(repeats):
                blocks.append(InvertedResidual(channels, out_ch, stride if index == 0 else 1, expansion))
                channels = out_ch
        blocks.append(_conv_bn(channels, last, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
