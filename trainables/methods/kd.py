"""``kd``: Hinton et al. (2015) knowledge distillation on the teacher's softened outputs.

Under a teacher-call budget (``teacher_budget`` set) the teacher labels each training image once before
training and every step reads those cached logits (``trainables.teacher_cache``): the budgeted KD
baseline Comparative KD is compared against. Without a budget the teacher runs on every batch as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from ..data import Batch
from ..losses import kd_loss
from ..params import Float, Param
from ..teacher_cache import TeacherLogitCache, cache_for, validate_budget
from .base import Method, StepResult, register_method


@register_method
class KD(Method):
    """``ce_weight * CE + kd_weight * T^2 * KL(p_t || p_s)`` (KL summed over classes, batch mean)."""

    name, label, order = "kd", "KD", 30
    source = "Hinton et al., 2015 (arXiv 1503.02531)"
    params = (
        Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature"),
        Param("kd_weight", float, 1.0, ge=0, search=Float(0.1, 10.0, log=True), doc="weight of the KL term"),
        Param("ce_weight", float, 1.0, ge=0, search=Float(0.1, 1.0), doc="weight of the cross-entropy"),
    )
    uses_teacher_store = True

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        validate_budget(cfg)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache: TeacherLogitCache | None = cache_for(self.cfg) if self.cfg.get("teacher_budget") else None

    def on_epoch_start(self, epoch: int) -> None:
        if self.cache is not None:  # budgeted: every teacher call happens here, once, before training
            self.cache.ensure(self.teacher, self.ctx.extras["data"].train, int(self.cfg["eval_batch_size"]))

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher_logits(batch)
        losses = {
            "ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
            "kd": self.cfg["kd_weight"] * kd_loss(logits, teacher_logits, self.cfg["temperature"]),
        }
        return StepResult(logits, losses)

    def teacher_logits(self, batch: Batch):
        """Teacher logits for this batch: from the cache under a budget, else the teacher (or its store)."""
        if self.cache is not None:
            return self.cache.lookup(batch.index)
        return self.teacher.for_batch(batch).logits

    def extra_state(self) -> dict[str, Any]:
        return {"teacher_cache": self.cache.state()} if self.cache is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.cache is not None and state.get("teacher_cache"):
            self.cache.load_state(state["teacher_cache"], self.ctx.device)
