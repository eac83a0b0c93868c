"""ShuffleNetV1 for CIFAR (``ShuffleV1``: 3 groups, widths 240/480/960) as used by RepDistiller.

Stem is a 1x1 conv to 24 channels at full resolution; each stage starts with a stride-2 unit that
concatenates an average-pooled shortcut. Key names (``conv1``, ``bn1``, ``layerN.i.{conv,bn}{1,2,3}``,
``linear``) follow the reference. Its fixed 4x4 average pool equals adaptive pooling on 32x32 inputs.

OFD, as mdistiller's ShuffleNetV1: a stage's pre-activation map is its last unit's sum (or, for a stride-2
unit, concatenation) before the final ReLU, so ReLU of it is the stage. It can be an OFD *student* only:
mdistiller names no BN behind those maps (``get_bn_before_relu`` refuses ShuffleNets as OFD teachers), and
none fits, since a stage ends in the sum of ``bn3`` with the unit's input (or the concatenation with the
pooled input); ``bn_before_relu`` therefore stays unimplemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PreactStages, ZooModel
from .registry import register_model
from .shuffle import channel_shuffle


class ShuffleUnit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1, plus identity or concat shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        # The very first unit sees only the 24-channel stem, too few to split into groups.
        self.first_groups = 1 if in_ch == 24 else groups
        self.conv1 = nn.Conv2d(in_ch, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.preact(x))

    def preact(self, x: Tensor) -> Tensor:
        """The unit's output before its final ReLU (sum, or concatenation with the pooled shortcut)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        return out + x


class CifarShuffleNetV1(ZooModel):
    """Three stages of shuffle units; every stage halves the resolution."""

    classifier_path = "linear"
    supports_preact = True

    def __init__(self, widths: list[int], blocks: list[int], groups: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages = []
        for width, n in zip(widths, blocks, strict=True):
            # The stride-2 unit's branch only produces what the concatenated shortcut does not.
            units = [ShuffleUnit(in_ch, width - in_ch, 2, groups)]
            units += [ShuffleUnit(width, width, 1, groups) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [stem, f1, f2, f3]

    def forward_preact_stages(self, x: Tensor) -> PreactStages:
        pre = [self.bn1(self.conv1(x))]
        stages = [F.relu(pre[0])]
        for layer in (self.layer1, self.layer2, self.layer3):
            pre.append(layer[-1].preact(layer[:-1](stages[-1])))
            stages.append(F.relu(pre[-1]))
        return PreactStages(stages, pre)


@register_model("ShuffleV1")
def shufflev1(num_classes: int = 100) -> CifarShuffleNetV1:
    """ShuffleNetV1, g=3, stage widths 240/480/960 with 4/8/4 units."""
    return CifarShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)
