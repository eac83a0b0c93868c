"""``ce``: the student trained alone with cross-entropy (the tables' "student" row)."""

from __future__ import annotations

import torch.nn.functional as F

from ..data import Batch
from ..params import FIXED
from .base import Method, StepResult, register_method


@register_method
class CrossEntropy(Method):
    """The student alone, cross-entropy on the labels."""

    name, label, order = "ce", "student", 10
    source = "cross-entropy baseline, RepDistiller's CIFAR recipe"
    search_space = FIXED
    needs_teacher = False

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        return StepResult(logits, {"ce": F.cross_entropy(logits, batch.y)})
