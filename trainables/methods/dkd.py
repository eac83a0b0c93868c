"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from ..data import Batch
from ..losses import dkd_loss
from .base import Method, StepResult, check_positive, register_method


@register_method
class DKD(Method):
    """``ce_weight * CE + w(e) * (alpha * TCKD + beta * NCKD)``, w(e) = min((e + 1) / warmup, 1).

    Defaults follow mdistiller's CIFAR-100 configuration (alpha 1, beta 8, T 4, 20 warm-up epochs);
    epochs are counted from 1 in the warm-up factor, as there.
    """

    name = "dkd"
    defaults = {"ce_weight": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0, "temperature": 4.0, "warmup_epochs": 20}
    summary = "decoupled KD: target (TCKD) and non-target (NCKD) terms with linear warm-up"
    uses_teacher_store = True

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        check_positive(cfg, "ce_weight", "dkd_alpha", "dkd_beta", "warmup_epochs")
        check_positive(cfg, "temperature", allow_zero=False)

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
