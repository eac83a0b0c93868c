"""A method defined outside ``trainables/methods/``: cross-entropy with label smoothing, declared in one file.

Importing this module registers it; the test that imports it checks that validation, the Optuna space, the
README tables and the report all follow from this declaration alone.
"""

from __future__ import annotations

import torch.nn.functional as F

from trainables.data import Batch
from trainables.methods import Method, StepResult, register_method
from trainables.params import Choice, Equals, Float, Param


@register_method
class LabelSmoothing(Method):
    """The student alone, cross-entropy against labels smoothed by ``smoothing``."""

    name, label, order, source = "toy_smooth", "LS", 15, "Szegedy et al., CVPR 2016"
    needs_teacher = False
    params = (
        Param("smoothing", float, 0.1, ge=0, le=0.5, search=Float(0.0, 0.3), doc="label smoothing epsilon"),
        Param("smoothing_schedule", str, "constant", choices=("constant", "decay"),
              search=Choice(("constant", "decay")), doc="keep epsilon, or decay it linearly to a floor"),
        Param("smoothing_floor", float, 0.0, ge=0, search=Float(0.0, 0.05),
              when=Equals("smoothing_schedule", "decay"), doc="epsilon at the last epoch"),
    )

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        eps = self.cfg["smoothing"]
        if self.cfg["smoothing_schedule"] == "decay":
            progress = epoch / max(self.ctx.epochs - 1, 1)
            eps = eps + (self.cfg["smoothing_floor"] - eps) * progress
        logits = self.student(batch.x)
        return StepResult(logits, {"ce": F.cross_entropy(logits, batch.y, label_smoothing=eps)})
