"""``online`` and ``offline``: distillation from a teacher's checkpoint trajectory or its final weights.

Harutyunyan et al. (ICLR 2023), "Supervision Complexity and its Role in Knowledge Distillation":
the student fits T^2 * KL(softmax(t/T) || softmax(s/T)) (plus an optional CE weight, 0 by default: pure
distillation). ``online`` switches the teacher along the checkpoints the ``teacher`` method kept, so the
targets grow more complex as the student learns; ``offline`` uses the final teacher throughout. The two
differ in that switch only, which the teacher source follows (``teacher_plan``; see
``trainables.teacher.trajectory``). Both can have the loop log the adjusted supervision complexity of
labels, shuffled labels and both teachers' targets every ``sc_every`` epochs
(``trainables.diagnostics.complexity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from ..data import Batch
from ..diagnostics.complexity import SC_KERNELS, check_sc_settings
from ..errors import ConfigError
from ..losses import kd_loss
from ..teacher import TeacherPlan
from ..teacher.trajectory import TrajectorySchedule, kept_checkpoints
from .base import Method, StepResult, check_choice, check_positive, register_method

SC_DEFAULTS: dict[str, Any] = {"sc_every": 0, "sc_n": 256, "sc_kernel": "per_logit", "sc_ridge": 1e-6}


def check_int(cfg: Mapping[str, Any], key: str, minimum: int, allow_none: bool = False) -> None:
    value = cfg.get(key)
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key} must be an integer >= {minimum}{extra}, got {value!r}")


class TrajectoryDistillation(Method):
    """Shared loss and supervision-complexity keys of ``online`` and ``offline`` (not registered)."""

    defaults: dict[str, Any] = {"ce_weight": 0.0, "temperature": 1.0, **SC_DEFAULTS}

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        check_positive(cfg, "ce_weight", "sc_ridge")
        check_positive(cfg, "temperature", allow_zero=False)
        check_int(cfg, "sc_every", 0)
        check_int(cfg, "sc_n", 2)
        check_choice("sc_kernel", cfg.get("sc_kernel"), SC_KERNELS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_sc_settings(self.cfg, self.student, len(self.ctx.extras["data"].train), self.ctx.num_classes)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher.outputs(batch).logits
        losses = {
            "ce": float(self.cfg["ce_weight"]) * F.cross_entropy(logits, batch.y),
            "kd": kd_loss(logits, teacher_logits, self.cfg["temperature"]),
        }
        return StepResult(logits, losses)


@register_method
class Offline(TrajectoryDistillation):
    name = "offline"
    defaults = dict(TrajectoryDistillation.defaults)
    summary = "pure distillation (T^2 KL, optional CE) from the final teacher throughout"


@register_method
class Online(TrajectoryDistillation):
    name = "online"
    defaults = {
        **TrajectoryDistillation.defaults,
        "teacher_trajectory": None,
        "switch_every": 1,
        "num_checkpoints": None,
    }
    summary = "online distillation: the teacher advances along its checkpoint trajectory"

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        TrajectoryDistillation.validate_config(cfg)
        check_int(cfg, "switch_every", 1)
        check_int(cfg, "num_checkpoints", 2, allow_none=True)
        kept_checkpoints(cfg)  # the folder, its epoch files and the final teacher must exist now

    @classmethod
    def teacher_plan(cls, cfg: Mapping[str, Any]) -> TeacherPlan:
        """The teacher source loads m(epoch) into the frozen teacher at each epoch start (strict; recomputed
        from the epoch, so resume is exact; not a teacher call)."""
        return TeacherPlan(trajectory=TrajectorySchedule.from_config(cfg))
