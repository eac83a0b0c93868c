"""ImageNet ResNet-18/34/50: torchvision's own definition, given the zoo contract.

Subclassing (rather than wrapping) ``torchvision.models.ResNet`` keeps torchvision's state_dict
keys, so its checkpoints (and mdistiller's ImageNet teachers, which use them) load strictly.
torchvision's ``avgpool`` is already adaptive, so the shared head computes the same logits.

The class is made on first use: importing ``torchvision.models`` imports TorchDynamo (through
``torchvision.ops``), about a second of every trial actor's start, and most studies build no ImageNet model.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor

from .base import ZooModel
from .registry import register_model


@functools.cache
def imagenet_resnet_class() -> type[ZooModel]:
    """torchvision's ResNet with the zoo contract (``forward`` through ``forward_stages`` and the shared head)."""
    from torchvision.models.resnet import ResNet

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

    ImageNetResNet.__module__, ImageNetResNet.__qualname__ = __name__, "ImageNetResNet"  # pickle finds it below
    return ImageNetResNet


def __getattr__(name: str) -> Any:
    """``ImageNetResNet`` as a module attribute, made on first access (pickle and ``isinstance`` use it)."""
    if name == "ImageNetResNet":
        return imagenet_resnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build(block: str, layers: list[int], num_classes: int, **kwargs: Any) -> ZooModel:
    from torchvision.models import resnet

    return imagenet_resnet_class()(getattr(resnet, block), layers, num_classes=num_classes, **kwargs)


@register_model("resnet18", imagenet=True)
def resnet18(num_classes: int = 1000, **kwargs: Any) -> ZooModel:
    """torchvision resnet18 (basic blocks 2/2/2/2); ``kwargs`` go to torchvision's ResNet."""
    return _build("BasicBlock", [2, 2, 2, 2], num_classes, **kwargs)


@register_model("resnet34", imagenet=True)
def resnet34(num_classes: int = 1000, **kwargs: Any) -> ZooModel:
    """torchvision resnet34 (basic blocks 3/4/6/3)."""
    return _build("BasicBlock", [3, 4, 6, 3], num_classes, **kwargs)


@register_model("resnet50", imagenet=True)
def resnet50(num_classes: int = 1000, **kwargs: Any) -> ZooModel:
    """torchvision resnet50 (bottlenecks 3/4/6/3)."""
    return _build("Bottleneck", [3, 4, 6, 3], num_classes, **kwargs)
