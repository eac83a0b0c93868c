"""ImageNet ResNet-18/34/50: torchvision's own definition, given the zoo contract.

Subclassing (rather than wrapping) ``torchvision.models.ResNet`` keeps torchvision's state_dict
keys, so its checkpoints (and mdistiller's ImageNet teachers, which use them) load strictly.
torchvision's ``avgpool`` is already adaptive, so the shared head computes the same logits.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .base import ZooModel
from .registry import register_model


class ImageNetResNet(ResNet, ZooModel):
    """torchvision ResNet whose forward goes through ``forward_stages`` and the shared head."""

    classifier_path = "fc"

    def forward(self, x: Tensor) -> Tensor:
        return ZooModel.forward(self, x)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


@register_model("resnet18", imagenet=True)
def resnet18(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """torchvision resnet18 (basic blocks 2/2/2/2); ``kwargs`` go to torchvision's ResNet."""
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register_model("resnet34", imagenet=True)
def resnet34(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """torchvision resnet34 (basic blocks 3/4/6/3)."""
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register_model("resnet50", imagenet=True)
def resnet50(num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    """torchvision resnet50 (bottlenecks 3/4/6/3)."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
