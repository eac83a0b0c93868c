"""MobileNet-v1 (1.0 width, 224 input) for ImageNet, registered as ``mobilenetv1``.

A 3x3 stride-2 stem then 13 depthwise-separable units, stored as one ``model`` Sequential
(``model.0`` ... ``model.13``) plus ``fc``: the key layout of mdistiller's ImageNet MobileNetV1
student, so its checkpoints load strictly. Its fixed AvgPool2d(7) equals adaptive pooling at 224.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import ZooModel, init_conv_bn
from .registry import register_model

# (output channels, stride) of the 13 depthwise-separable units.
_UNITS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1)]
# model[i:j] slices whose outputs are the stage taps: stem+unit1, then one per resolution.
_STAGE_ENDS = [2, 4, 6, 12, 14]


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


def _separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (carries the stride) then pointwise 1x1, each with BN and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False), nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class MobileNetV1(ZooModel):
    """Stage outputs at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input resolution."""

    classifier_path = "fc"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [_conv_bn_relu(3, 32, 2)]
        in_ch = 32
        for out_ch, stride in _UNITS:
            layers.append(_separable(in_ch, out_ch, stride))
            in_ch = out_ch
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)
        init_conv_bn(self)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stages, start = [], 0
        for end in _STAGE_ENDS:
            x = self.model[start:end](x)
            stages.append(x)
            start = end
        return stages


@register_model("mobilenetv1", imagenet=True)
def mobilenetv1(num_classes: int = 1000) -> MobileNetV1:
    """MobileNet-v1 1.0x (about 4.2M parameters at 1000 classes)."""
    return MobileNetV1(num_classes=num_classes)
