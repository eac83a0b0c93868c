"""ShuffleNetV2 for CIFAR (``ShuffleV2``, 1.0x: widths 116/232/464, 1024-channel head) as in RepDistiller.

Each stage is one stride-2 ``DownBlock`` followed by channel-split units; the network ends in a 1x1
``conv2``/``bn2``/ReLU to 1024 channels, and that map (what the head pools) is ``forward_features``.
Key names follow the reference. Its fixed 4x4 average pool equals adaptive pooling on 32x32 inputs.

OFD, as mdistiller's ShuffleNetV2: a stage's pre-activation map is its last unit's concatenation of the kept
half with ``bn3``'s output, before that half's ReLU. Two readings differ from the stage list:

- the maps are the three *stages* (the last 464 channels wide), as mdistiller distils them; the 1x1 head
  conv (``conv2``/``bn2``, 1024 channels), which ``stages[-1]`` is, gets no map;
- the map is channel-shuffled like the unit's output (mdistiller takes it before the shuffle), so ReLU of
  it equals the stage output exactly (the kept half is already non-negative). For OFD that is the same
  student: the map only feeds a 1x1 connector whose initial weights are drawn i.i.d., which a fixed
  permutation of its input channels leaves equal in distribution.

It can be an OFD *student* only: half of each map is no BN's output, and mdistiller's
``get_bn_before_relu`` refuses ShuffleNets as OFD teachers; ``bn_before_relu`` stays unimplemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PreactStages, ZooModel
from .registry import register_model
from .shuffle import channel_shuffle


def _dw3x3(ch: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, kernel_size=3, stride=stride, padding=1, groups=ch, bias=False)


def _pw(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False)


class SplitUnit(nn.Module):
    """Keep half the channels untouched, run the other half through 1x1-dw3x3-1x1, concat, shuffle."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        half = ch // 2
        self.conv1, self.bn1 = _pw(half, half), nn.BatchNorm2d(half)
        self.conv2, self.bn2 = _dw3x3(half, 1), nn.BatchNorm2d(half)
        self.conv3, self.bn3 = _pw(half, half), nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, F.relu(self._branch(work))], 1), 2)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(map before the branch's last ReLU, unit output)``, both shuffled alike (OFD)."""
        keep, work = x.chunk(2, dim=1)
        branch = self._branch(work)
        pre = channel_shuffle(torch.cat([keep, branch], 1), 2)
        return pre, channel_shuffle(torch.cat([keep, F.relu(branch)], 1), 2)

    def _branch(self, work: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(work)))
        out = self.bn2(self.conv2(out))
        return self.bn3(self.conv3(out))


class DownUnit(nn.Module):
    """Two stride-2 branches over the full input, each giving half the output channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1, self.bn1 = _dw3x3(in_ch, 2), nn.BatchNorm2d(in_ch)
        self.conv2, self.bn2 = _pw(in_ch, mid), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _pw(in_ch, mid), nn.BatchNorm2d(mid)
        self.conv4, self.bn4 = _dw3x3(mid, 2), nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = _pw(mid, mid), nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(ZooModel):
    """1x1 stem at full resolution, three down-sampling stages, 1x1 head conv."""

    classifier_path = "linear"
    supports_preact = True

    def __init__(self, widths: list[int], blocks: list[int], head_ch: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages = []
        for width, n in zip(widths, blocks, strict=True):
            stages.append(nn.Sequential(DownUnit(in_ch, width), *[SplitUnit(width) for _ in range(n)]))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _pw(in_ch, head_ch)
        self.bn2 = nn.BatchNorm2d(head_ch)
        self.linear = nn.Linear(head_ch, num_classes)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        head = F.relu(self.bn2(self.conv2(self.layer3(f2))))
        return [stem, f1, f2, head]

    def forward_preact_stages(self, x: Tensor) -> PreactStages:
        pre = [self.bn1(self.conv1(x))]
        stages = [F.relu(pre[0])]
        for layer in (self.layer1, self.layer2, self.layer3):
            p, out = layer[-1].forward_preact(layer[:-1](stages[-1]))
            pre.append(p)
            stages.append(out)
        stages[-1] = F.relu(self.bn2(self.conv2(stages[-1])))
        return PreactStages(stages, pre)


@register_model("ShuffleV2")
def shufflev2(num_classes: int = 100) -> CifarShuffleNetV2:
    """ShuffleNetV2 1.0x: widths 116/232/464, 1+3/1+7/1+3 units, 1024-channel head."""
    return CifarShuffleNetV2([116, 232, 464], [3, 7, 3], head_ch=1024, num_classes=num_classes)
