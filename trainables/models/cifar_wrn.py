"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2) as used by RepDistiller/mdistiller.

Pre-activation blocks (BN-ReLU-conv), so the network ends with its own ``bn1`` + ReLU before pooling;
``forward_features`` returns the map after that final BN-ReLU. Names (``blockN.layer.i.*``,
``convShortcut``, ``bn1``, ``fc``) follow the reference for strict checkpoint loading.

OFD, as mdistiller's WRN: blocks are pre-activation, so a stage ends in a raw residual sum and its ReLU is
applied by the *next* BN-ReLU: the first block of the next stage (``block2.layer[0].bn1``,
``block3.layer[0].bn1``) and, after stage 3, the network's own ``bn1``. Those three BNs are
``bn_before_relu`` and their outputs the pre-activation maps, so each map is exactly its BN's output. ReLU
of the last one is the last stage (the map the head pools); ReLU of the first two is what the next stage's
first block computes from its input, not the stage output (the raw sum) listed in ``stages``. mdistiller
runs those BNs a second time on the stage outputs to get the maps, which in training updates their running
statistics twice per step; here the pass computes each once and the next block continues from it.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .base import PreactStages, ZooModel
from .registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; a 1x1 ``convShortcut`` on the activated input when shapes change."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_ch == out_ch
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self._from_activated(x, self.relu1(self.bn1(x)))

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(bn1(x), block output)``: the block's first BN output (OFD's map of the previous stage), kept."""
        pre = self.bn1(x)
        return pre, self._from_activated(x, F.relu(pre))

    def _from_activated(self, x: Tensor, act: Tensor) -> Tensor:
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # The reference adds the raw input when shapes agree, else the projection of the activated input.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One resolution stage; the ``layer`` attribute name is part of the checkpoint keys."""

    def __init__(self, blocks: int, in_ch: int, out_ch: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, drop_rate)
            for i in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """``depth = 6n + 4``; stage widths ``16k, 32k, 64k`` for widen factor ``k``."""

    classifier_path = "fc"
    supports_preact = True
    supports_bn_before_relu = True

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's scheme: He-normal on fan_out, unit BN, zero linear bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = self.conv1(x)
        f1 = self.block1(stem)
        f2 = self.block2(f1)
        f3 = self.relu(self.bn1(self.block3(f2)))
        return [stem, f1, f2, f3]

    def forward_preact_stages(self, x: Tensor) -> PreactStages:
        stem = self.conv1(x)
        stages, pre = [stem, self.block1(stem)], [stem]
        for block in (self.block2, self.block3):
            p, out = block.layer[0].forward_preact(stages[-1])
            pre.append(p)
            stages.append(block.layer[1:](out))
        pre.append(self.bn1(stages[-1]))
        stages[-1] = F.relu(pre[-1])
        return PreactStages(stages, pre)

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


def _register(name: str, depth: int, widen: int) -> None:
    @register_model(name)
    def build(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes=num_classes, drop_rate=drop_rate)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR WRN-{depth}-{widen}."


for _depth in (16, 40):
    for _widen in (1, 2):
        _register(f"wrn_{_depth}_{_widen}", _depth, _widen)
