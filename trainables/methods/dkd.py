"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch.nn.functional as F

from ..data import Batch
from ..losses import dkd_loss
from ..params import Float, Param
from .base import Method, StepResult, register_method


@register_method
class DKD(Method):
    """``ce_weight * CE + w(e) * (alpha * TCKD + beta * NCKD)``, w(e) = min((e + 1) / warmup, 1).

    Defaults follow mdistiller's CIFAR-100 configuration (``CFG.DKD``: CE 1, alpha 1, beta 8, T 4, 20 warm-up
    epochs); epochs are counted from 1 in the warm-up factor, as there. mdistiller's per-pair files
    (``configs/cifar100/dkd/``) change beta only: 2 for resnet56->resnet20 and resnet110->resnet32, 6 for
    the wrn_40_2 teacher with a WRN student (wrn_40_1, wrn_16_2) and for the vgg13 teacher, 8 (the default)
    for the resnet32x4 pairs, wrn_40_2->ShuffleV1 and ResNet50->MobileNetV2. ``study/presets/
    table1_cifar100.yaml`` sets them per pair (``pairs[i].method_config``), 2 for resnet110->resnet20.
    """

    name, label, order = "dkd", "DKD", 100
    source = "Zhao et al., CVPR 2022; defaults of mdistiller's CIFAR-100 config"
    params = (
        Param("dkd_alpha", float, 1.0, ge=0, search=Float(0.5, 2.0), doc="weight of TCKD (target class)"),
        Param("dkd_beta", float, 8.0, ge=0, search=Float(1.0, 10.0), doc="weight of NCKD (non-target classes)"),
        Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy"),
        Param("warmup_epochs", float, 20, ge=0, doc="epochs of linear warm-up of the KD terms"),
    )
    uses_teacher_store = True

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher.outputs(batch).logits
        warmup = max(float(self.cfg["warmup_epochs"]), 1.0)
        ramp = min((epoch + 1) / warmup, 1.0)
        tckd, nckd = dkd_loss(
            logits, teacher_logits, batch.y, self.cfg["dkd_alpha"], self.cfg["dkd_beta"], self.cfg["temperature"]
        )
        losses = {
            "ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
            "tckd": ramp * tckd,
            "nckd": ramp * nckd,
        }
        return StepResult(logits, losses)
