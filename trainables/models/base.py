"""Shared contract for every model in the zoo.

Distillation methods need more than logits: FitNet wants an intermediate map, feature-based losses
want the final map before pooling, and logit methods want to re-run just the head. Every model
therefore derives from :class:`ZooModel` and only has to say how to compute its stage outputs and
where its final linear layer lives; pooling, flattening and the classifier call are shared here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class PreactStages:
    """One pass's ordinary stages and OFD's pre-activation maps (:meth:`ZooModel.forward_preact_stages`)."""

    stages: list[Tensor]
    """Exactly :meth:`ZooModel.forward_stages` of the same input (the head pools ``stages[-1]``)."""
    preact: list[Tensor]
    """``[stem, stage1, ..., stageN]`` before the ReLU that ends each stage, or that the next layer applies
    first (mdistiller's ``preact_feats``); each family's docstring says where its maps are taken."""


class ZooModel(nn.Module, abc.ABC):
    """Base class: ``forward(x) == forward_head(forward_features(x))`` by construction.

    Subclasses implement :meth:`forward_stages` and set ``classifier_path`` to the dotted
    attribute path of their final ``nn.Linear`` (kept at the reference name so checkpoint keys match).
    """

    classifier_path: str = "fc"
    supports_preact: bool = False
    """True for families that implement :meth:`forward_preact_stages` (what an OFD student needs)."""
    supports_bn_before_relu: bool = False
    """True where :meth:`bn_before_relu` names the BN behind each pre-activation map too (an OFD teacher's margin)."""

    @abc.abstractmethod
    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Return ``[stem, stage1, ..., stageN]`` feature maps, each ``(B, C, H, W)``.

        Indices follow RepDistiller's ``feats`` list, so its FitNet default (hint layer 2) names
        the same middle-stage map. The last entry is always what the head pools, which for WRN
        (final BN-ReLU), MobileNetV2 and ShuffleV2 (1x1 head conv) goes one step past
        RepDistiller's last tap.
        """

    def forward_preact_stages(self, x: Tensor) -> PreactStages:
        """The stages and their pre-activation maps from one pass (OFD reads ``preact[1:]``, predicts from
        ``stages[-1]``), each BN run once so training updates its statistics as a plain forward does.

        Families that support it set ``supports_preact``; the others raise ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-activation stages")

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """One BN per map of ``preact[1:]``, the one that (last) produced it: its affine parameters give
        OFD's margin. Families that have them set ``supports_bn_before_relu``."""
        raise NotImplementedError(f"{type(self).__name__} names no BN before its pre-activation maps")

    def forward_features(self, x: Tensor) -> Tensor:
        """Final feature map ``(B, C, H, W)`` before pooling."""
        return self.forward_stages(x)[-1]

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average pool (any spatial size), flatten, classify."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
        return self.get_classifier()(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (KD methods read or replace it)."""
        layer = self.get_submodule(self.classifier_path)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{type(self).__name__}.{self.classifier_path} is {type(layer).__name__}, "
                            "expected nn.Linear")
        return layer

    @property
    def feature_channels(self) -> int:
        """Channel count C of :meth:`forward_features` (equals the classifier's input size)."""
        return self.get_classifier().in_features


def init_conv_bn(module: nn.Module) -> None:
    """Kaiming (fan_out) for convs, unit/zero BN: the initialisation the CIFAR references use."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
