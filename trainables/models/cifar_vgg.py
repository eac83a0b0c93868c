"""VGG with BatchNorm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19) as used by RepDistiller/mdistiller.

The reference registers its ``vggN_bn`` constructors under the plain names ``vggN``; so does this
zoo. Five conv blocks (``block0`` ... ``block4``, Sequential of conv/BN/ReLU with the block's last
ReLU applied outside), 2x2 max-pools between blocks 0-3 (the one after block3 only for 64-pixel
inputs, as in the reference), global average pooling and a single ``classifier`` Linear(512, C).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ZooModel
from .registry import register_model

# Output channels of each conv in block0..block4.
_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _conv_block(in_ch: int, widths: list[int]) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU repeated, without the trailing ReLU (the forward applies it)."""
    layers: list[nn.Module] = []
    for out_ch in widths:
        layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch),
                   nn.ReLU(inplace=True)]
        in_ch = out_ch
    return nn.Sequential(*layers[:-1])


class CifarVGG(ZooModel):
    """VGG-BN whose stage outputs are the ReLU'd block outputs, before each max-pool."""

    classifier_path = "classifier"

    def __init__(self, cfg: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        in_chs = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0 = _conv_block(in_chs[0], cfg[0])
        self.block1 = _conv_block(in_chs[1], cfg[1])
        self.block2 = _conv_block(in_chs[2], cfg[2])
        self.block3 = _conv_block(in_chs[3], cfg[3])
        self.block4 = _conv_block(in_chs[4], cfg[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's scheme: He-normal on fan_out, unit BN, N(0, 0.01) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        tiny_imagenet = x.shape[2] == 64  # reference: one more downsampling for 64x64 inputs
        f0 = F.relu(self.block0(x))
        f1 = F.relu(self.block1(self.pool0(f0)))
        f2 = F.relu(self.block2(self.pool1(f1)))
        f3 = F.relu(self.block3(self.pool2(f2)))
        f4 = F.relu(self.block4(self.pool3(f3) if tiny_imagenet else f3))
        return [f0, f1, f2, f3, f4]


def _register(name: str, cfg: list[list[int]]) -> None:
    @register_model(name)
    def build(num_classes: int = 100) -> CifarVGG:
        return CifarVGG(cfg, num_classes=num_classes)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR {name} with BatchNorm (RepDistiller's {name}_bn)."


for _name, _cfg in _CONFIGS.items():
    _register(_name, _cfg)
