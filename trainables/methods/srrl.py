"""``srrl``: Softmax Regression Representation Learning (Yang et al., ICLR 2021).

``alpha_ce * CE(student head) + alpha * MSE(teacher_head(conn(F_s)), z_t) + beta * MSE(conn(F_s), F_t)``.
The student keeps and is evaluated with its own classifier; the teacher's frozen head only supervises
the connected features (the "softmax regression" term). ``fm_mode: pooled`` gives SRRL's official-code
variant (connector on the pooled vector); the default compares spatial maps like the rest of the family.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..data import Batch
from .base import StepResult, register_method
from .softmax_regression import ALPHA, ALPHA_CE, BETA, CONNECTOR_PARAMS, OUTPUT_PARAMS, SoftmaxRegressionMethod, mse


@register_method
class SRRL(SoftmaxRegressionMethod):
    """CE on its own head + alpha * SR logit MSE through the teacher head + beta * feature MSE."""

    name, label, order = "srrl", "SRRL", 110
    source = "Yang et al., ICLR 2021"
    params = (ALPHA, BETA, *CONNECTOR_PARAMS, ALPHA_CE, *OUTPUT_PARAMS)
    uses_own_head = True

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats)
        mapped = self.to_teacher_space(feats)
        teacher_out = self.teacher.outputs(batch, want="features")
        sr_logits = self.teacher.head(mapped)
        losses = {
            "ce": self.cfg["alpha_ce"] * F.cross_entropy(logits, batch.y),
            "sr": self.cfg["alpha"] * mse(sr_logits, teacher_out.logits.to(sr_logits.dtype), self.mse_reduction),
            "fm": self.cfg["beta"] * self.feature_loss(mapped, teacher_out.features),
        }
        return StepResult(logits, losses)
