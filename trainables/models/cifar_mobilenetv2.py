"""MobileNetV2 for CIFAR, width 0.5 / expansion 6 (RepDistiller's ``mobile_half``), as ``MobileNetV2``.

Keeps the reference layout and key names: ``conv1`` (stride-2 3x3 stem), ``blocks.i.j.conv.k``
inverted residuals (each with an expansion 1x1 conv even when the ratio is 1), ``conv2`` 1x1 to
1280 channels and ``classifier.0`` Linear. The reference pools with a fixed AvgPool2d sized for
32x32 inputs (2x2 final map); adaptive average pooling is identical there and also works elsewhere.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .base import ZooModel
from .registry import register_model

# (expansion t, output channels c, repeats n, first stride s) at width 1.0; the model's ``expansion``
# argument replaces every t other than the first block's 1.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; identity shortcut when shapes agree."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class CifarMobileNetV2(ZooModel):
    """Stage outputs follow the reference's feature taps: stem, blocks 1, 2, 4, then the 1x1 head."""

    classifier_path = "classifier.0"

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTINGS:
            out_ch = int(c * width_mult)
            t = expansion if t != 1 else 1
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's scheme: He-normal on fan_out, unit BN, N(0, 0.01) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = self.conv1(x)
        f1 = self.blocks[1](self.blocks[0](stem))
        f2 = self.blocks[2](f1)
        f3 = self.blocks[4](self.blocks[3](f2))
        head = self.conv2(self.blocks[6](self.blocks[5](f3)))
        return [stem, f1, f2, f3, head]


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int = 100) -> CifarMobileNetV2:
    """RepDistiller's ``mobile_half``: MobileNetV2 at width 0.5, expansion 6."""
    return CifarMobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
