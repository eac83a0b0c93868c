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
from ..losses import kd_loss
from ..params import ANY, Float, Int, Param
from ..teacher import TeacherPlan
from ..teacher.trajectory import TrajectorySchedule, kept_checkpoints
from .base import Method, StepResult, register_method

TEMPERATURE = Param("temperature", float, 1.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature")
SC_PARAMS = (
    Param("sc_every", int, 0, ge=0, doc="log supervision complexity every N epochs (0: never)"),
    Param("sc_n", int, 256, ge=2, doc="training images the complexity is measured on"),
    Param("sc_kernel", str, "per_logit", choices=SC_KERNELS, doc="which NTK Gram matrix the complexity uses"),
    Param("sc_ridge", float, 1e-6, ge=0, doc="ridge added to the Gram matrix"),
)


class TrajectoryDistillation(Method):
    """Shared loss and supervision-complexity keys of ``online`` and ``offline`` (not registered)."""

    source = "Harutyunyan et al., ICLR 2023"
    params = (
        TEMPERATURE,
        Param("ce_weight", float, 0.0, ge=0, doc="weight of the cross-entropy (0: pure distillation)"),
        *SC_PARAMS,
    )

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
    """Pure distillation (T^2 KL, optional CE) from the final teacher throughout."""

    name, label, order = "offline", "offline KD", 150


@register_method
class Online(TrajectoryDistillation):
    """Online distillation: the teacher advances along its checkpoint trajectory."""

    name, label, order = "online", "online KD", 160
    params = (
        Param("switch_every", int, 1, ge=1, search=Int(1, 10), doc="epochs between teacher switches"),
        *TrajectoryDistillation.params,
        Param("teacher_trajectory", ANY, None, allowed="a folder or null",
              doc="the teacher's epoch_XXXX.pt files (default: teacher_checkpoint's folder)"),
        Param("num_checkpoints", int, None, ge=2, doc="use this many checkpoints, evenly spaced (null: all)"),
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        kept_checkpoints(cfg)  # the folder, its epoch files and the final teacher must exist now

    @classmethod
    def teacher_plan(cls, cfg: Mapping[str, Any]) -> TeacherPlan:
        """The teacher source loads m(epoch) into the frozen teacher at each epoch start (strict; recomputed
        from the epoch, so resume is exact; not a teacher call)."""
        return TeacherPlan(trajectory=TrajectorySchedule.from_config(cfg))
