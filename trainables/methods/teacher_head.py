"""``teacher_head``: the student trained on hard labels through the teacher's frozen classifier.

The IJCKD paper's Table 5 (and Table 3's "ce_only" row): ``CE(teacher_head(phi(F_s)), y)`` with no
teacher outputs at all, to isolate what reusing the classifier buys. ``phi`` is the identity where the
student's and teacher's channel counts agree, else a connector (depth 1 by default). The teacher trunk
never runs in training (``teacher_calls`` stays 0); the bound diagnostics still read it on validation.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..data import Batch
from ..params import FIXED
from .base import StepResult, register_method
from .softmax_regression import CONNECTOR_PARAMS, EXPORT_MODEL, SoftmaxRegressionMethod


@register_method
class TeacherHeadStudent(SoftmaxRegressionMethod):
    """The student trained with CE through the teacher's frozen classifier (Table 5)."""

    name, label, order = "teacher_head", "teacher classifier", 130
    source = "IJCKD paper (arXiv 2304.11004), Tables 3 and 5"
    params = (*(p.replace(search=None) for p in CONNECTOR_PARAMS), EXPORT_MODEL)
    search_space = FIXED
    connector_always = False
    has_feature_loss = False

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.teacher.head(self.to_teacher_space(self.student.forward_features(batch.x)))
        return StepResult(logits, {"ce": F.cross_entropy(logits, batch.y)})
