"""``ce``: the student trained alone with cross-entropy (the tables' "student" row)."""

from __future__ import annotations

import torch.nn.functional as F

from ..data import Batch
from .base import Method, StepResult, register_method


@register_method
class CrossEntropy(Method):
    name = "ce"
    defaults = {}
    needs_teacher = False
    summary = "student alone, cross-entropy on the labels"

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        return StepResult(logits, {"ce": F.cross_entropy(logits, batch.y)})
