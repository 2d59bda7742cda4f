"""VGG-16/19 with batch norm, CIFAR-style: 3x3 convs, max pooling, one linear classifier."""

from __future__ import annotations

from torch import Tensor, nn

from host.models._common import scaled

CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class CifarVGG(nn.Module):
    """VGG with BN. A pooling step is skipped once the feature map is 1x1, so small inputs work."""

    def __init__(self, config: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in CONFIGS[config]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            out = scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
