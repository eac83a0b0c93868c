"""``kd``: Hinton et al. (2015) knowledge distillation on the teacher's softened outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from ..data import Batch
from ..losses import kd_loss
from .base import Method, StepResult, check_positive, register_method


@register_method
class KD(Method):
    """``ce_weight * CE + kd_weight * T^2 * KL(p_t || p_s)`` (KL summed over classes, batch mean)."""

    name = "kd"
    defaults = {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0}
    summary = "Hinton KD: CE + T^2 KL(teacher || student)"
    uses_teacher_cache = True

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        check_positive(cfg, "ce_weight", "kd_weight")
        check_positive(cfg, "temperature", allow_zero=False)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher_logits(batch)
        losses = {
            "ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
            "kd": self.cfg["kd_weight"] * kd_loss(logits, teacher_logits, self.cfg["temperature"]),
        }
        return StepResult(logits, losses)

    def teacher_logits(self, batch: Batch):
        """Teacher logits for this batch (a budgeted variant may serve them from a cache instead)."""
        return self.teacher.for_batch(batch).logits
