"""``kd``: Hinton et al. (2015) knowledge distillation on the teacher's softened outputs.

Under a teacher-call budget (``teacher_budget`` set) the teacher labels each training image once before
training and every step reads those cached logits (``trainables.teacher.budget``): the budgeted KD
baseline Comparative KD is compared against. Without a budget the teacher runs on every batch as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from ..data import Batch
from ..losses import kd_loss
from ..params import Float, Param
from ..teacher import TeacherPlan
from ..teacher.budget import validate_budget
from .base import Method, StepResult, register_method


@register_method
class KD(Method):
    """``ce_weight * CE + kd_weight * T^2 * KL(p_t || p_s)`` (KL summed over classes, batch mean).

    Defaults are the KD benchmark's setting the paper's KD row comes from: T 4, CE weight 0.1, KL weight
    0.9 (RepDistiller's ``--distill kd -r 0.1 -a 0.9``; mdistiller's ``CFG.KD``: T 4, CE 0.1, KD 0.9).
    """

    name, label, order = "kd", "KD", 30
    source = "Hinton et al., 2015 (arXiv 1503.02531); defaults T 4, CE 0.1, KD 0.9 of RepDistiller/mdistiller"
    params = (
        Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature"),
        Param("kd_weight", float, 0.9, ge=0, search=Float(0.1, 10.0, log=True), doc="weight of the KL term"),
        Param("ce_weight", float, 0.1, ge=0, search=Float(0.1, 1.0), doc="weight of the cross-entropy"),
    )
    uses_teacher_store = True

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        validate_budget(cfg)

    @classmethod
    def teacher_plan(cls, cfg: Mapping[str, Any]) -> TeacherPlan:
        """Budgeted: every teacher call happens once per image, before training."""
        return TeacherPlan(label_once=cfg.get("teacher_budget") is not None)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher.outputs(batch).logits
        losses = {
            "ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
            "kd": self.cfg["kd_weight"] * kd_loss(logits, teacher_logits, self.cfg["temperature"]),
        }
        return StepResult(logits, losses)
