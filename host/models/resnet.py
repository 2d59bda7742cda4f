"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of BasicBlocks, 16/32/64 channels.

The shortcut is "option B": a 1x1 conv + BN whenever the shape changes. Unlike option A (zero padding) it
gives every residual add a real layer, which keeps channel coupling explicit for pruning and export.
"""

from __future__ import annotations

from torch import Tensor, nn

from host.models._common import scaled


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images."""

    def __init__(self, depth: int, *, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        in_planes = widths[0]
        stages = []
        for index, planes in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init_weights(self, residual_scale=(3 * blocks_per_stage) ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def _init_weights(model: nn.Module, residual_scale: float) -> None:
    """Kaiming convs; the last BN of every residual branch starts at ``residual_scale`` = 1/sqrt(blocks).

    With unit BN gains each block doubles the activation variance, so an untrained ResNet-110 in eval
    mode outputs ~1e7 and every numeric comparison (masked vs realized, eager vs exported) drowns in
    float32 rounding. Scaling the branch keeps the total growth near e (as SkipInit/Fixup argue); unlike
    zero-init it leaves every conv's contribution non-zero, so tests on random weights stay meaningful.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():  # after the loop above, which visits a block before its bn2
        if isinstance(module, BasicBlock):
            nn.init.constant_(module.bn2.weight, residual_scale)
