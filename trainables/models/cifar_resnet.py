"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) as used by RepDistiller/mdistiller.

Three stages of post-activation basic blocks on a 3x3 stem. Attribute names (``conv1``, ``bn1``,
``layerN.i.{conv,bn}{1,2}``, ``downsample.{0,1}``, ``fc``) follow the reference so its released
``{'model': state_dict}`` checkpoints load strictly.

OFD (``forward_preact_stages``, ``bn_before_relu``) as mdistiller's ResNet: a stage's pre-activation map is its
last block's residual sum before the ReLU, so ReLU of it is the stage; the BN named for its margin is that
block's ``bn2``, the residual branch's last BN (the shortcut is added after it).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import PreactStages, ZooModel, init_conv_bn
from .registry import register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs plus identity (or 1x1 projection) shortcut, ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))

    def preact(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU (residual sum)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class CifarResNet(ZooModel):
    """``depth = 6n + 2``; ``widths = [stem, stage1, stage2, stage3]`` channels."""

    classifier_path = "fc"
    supports_preact = True
    supports_bn_before_relu = True

    def __init__(self, depth: int, widths: list[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"basic-block CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_ch, out_ch, stride)]
        layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3]

    def forward_preact_stages(self, x: Tensor) -> PreactStages:
        pre = [self.bn1(self.conv1(x))]
        stages = [F.relu(pre[0])]
        for layer in (self.layer1, self.layer2, self.layer3):
            out = stages[-1]
            for block in layer[:-1]:
                out = block(out)
            pre.append(layer[-1].preact(out))
            stages.append(F.relu(pre[-1]))
        return PreactStages(stages, pre)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [layer[-1].bn2 for layer in (self.layer1, self.layer2, self.layer3)]


_SMALL = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]
_CONFIGS = {
    "resnet8": (8, _SMALL),
    "resnet14": (14, _SMALL),
    "resnet20": (20, _SMALL),
    "resnet32": (32, _SMALL),
    "resnet44": (44, _SMALL),
    "resnet56": (56, _SMALL),
    "resnet110": (110, _SMALL),
    "resnet8x4": (8, _X4),
    "resnet32x4": (32, _X4),
}


def _register(name: str, depth: int, widths: list[int]) -> None:
    @register_model(name)
    def build(num_classes: int = 100) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes=num_classes)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR {name}: depth {depth}, widths {widths}."


for _name, (_depth, _widths) in _CONFIGS.items():
    _register(_name, _depth, _widths)
