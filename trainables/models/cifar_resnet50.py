"""ResNet-50 for CIFAR (``ResNet50``, RepDistiller's ``resnetv2.py``), not the ImageNet ``resnet50``.

ImageNet-style bottleneck stages (64/128/256/512 x4) on a 3x3 stride-1 stem without max-pool, so a
32x32 input ends at 4x4. Key names (``layerN.i.conv1-3/bn1-3``, ``shortcut.{0,1}``, ``linear``)
follow the reference; its adaptive average pool is the same as this zoo's head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel, init_conv_bn
from .registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (strided) - 1x1 expand x4, projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarBottleneckResNet(ZooModel):
    """Four bottleneck stages; ``blocks`` gives the number of units per stage."""

    classifier_path = "linear"

    def __init__(self, blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_ch = 64
        stages = []
        for i, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks, strict=True)):
            units = []
            for j in range(n):
                units.append(Bottleneck(in_ch, planes, stride=2 if i > 0 and j == 0 else 1))
                in_ch = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_ch, num_classes)
        init_conv_bn(self)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


@register_model("ResNet50")
def cifar_resnet50(num_classes: int = 100) -> CifarBottleneckResNet:
    """CIFAR ResNet-50: 3/4/6/3 bottleneck units, 2048-channel output."""
    return CifarBottleneckResNet([3, 4, 6, 3], num_classes=num_classes)
