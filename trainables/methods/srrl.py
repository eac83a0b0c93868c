"""``srrl``: Softmax Regression Representation Learning (Yang et al., ICLR 2021).

``alpha_ce * CE(student head) + alpha * MSE(teacher_head(conn(F_s)), z_t) + beta * MSE(conn(F_s), F_t)``.
The student keeps and is evaluated with its own classifier; the teacher's frozen head only supervises
the connected features (the "softmax regression" term). The default ``fm_mode: spatial_mean`` is SRRL's
official code (github.com/jingyang2017/KD_SRRL): the connector acts on the student's spatial map, the FM
term compares spatial means, ``MSE(mean_hw(conn(F_s)), mean_hw(F_t))``, and the SR term reads the teacher's
head (which pools) on ``conn(F_s)``. ``spatial`` compares whole maps like the rest of the family;
``pooled_input`` is SimKD's re-implementation (student map pooled before the connector).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from ..data import Batch
from .base import StepResult, register_method
from .softmax_regression import FAMILY_DEFAULTS, SoftmaxRegressionMethod, mse


@register_method
class SRRL(SoftmaxRegressionMethod):
    name = "srrl"
    defaults = {**FAMILY_DEFAULTS, "fm_mode": "spatial_mean", "alpha_ce": 1.0, "alpha": 1.0, "beta": 1.0}
    summary = "SRRL: CE on own head + alpha * SR logit MSE through the teacher head + beta * feature MSE"
    uses_own_head = True

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        SoftmaxRegressionMethod.validate_connector_keys(cfg)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats)
        mapped = self.to_teacher_space(feats)
        teacher_out = self.teacher(batch.x)
        sr_logits = self.teacher.head(mapped)
        losses = {
            "ce": self.cfg["alpha_ce"] * F.cross_entropy(logits, batch.y),
            "sr": self.cfg["alpha"] * mse(sr_logits, teacher_out.logits.to(sr_logits.dtype), self.mse_reduction),
            "fm": self.cfg["beta"] * self.feature_loss(mapped, teacher_out.features),
        }
        return StepResult(logits, losses)
