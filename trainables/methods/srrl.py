"""``srrl``: Softmax Regression Representation Learning (Yang et al., ICLR 2021).

``alpha_ce * CE(student head) + alpha * MSE(teacher_head(conn(F_s)), z_t) + beta * MSE(conn(F_s), F_t)``.
The student keeps and is evaluated with its own classifier; the teacher's frozen head only supervises
the connected features (the "softmax regression" term). The default ``fm_mode: spatial_mean`` is SRRL's
official code (github.com/jingyang2017/KD_SRRL): the connector acts on the student's spatial map, the FM
term compares spatial means, ``MSE(mean_hw(conn(F_s)), mean_hw(F_t))``, and the SR term reads the teacher's
head (which pools) on ``conn(F_s)``. ``spatial`` compares whole maps like the rest of the family;
``pooled_input`` is SimKD's re-implementation (student map pooled before the connector).

Defaults are SRRL's official code: CE 1, SR 1 (``--weight 1``), FM 1, a single 1x1 conv + BN + ReLU
connector (``transfer_conv``).
"""

from __future__ import annotations

import torch.nn.functional as F

from ..data import Batch
from .base import StepResult, register_method
from .softmax_regression import (
    ALPHA,
    ALPHA_CE,
    BETA,
    CONNECTOR_PARAMS,
    EXPORT_MODEL,
    EXPORT_MODULE,
    FM_MODE,
    MSE_REDUCTION,
    SoftmaxRegressionMethod,
    mse,
)


@register_method
class SRRL(SoftmaxRegressionMethod):
    """CE on its own head + alpha * SR logit MSE through the teacher head + beta * feature MSE."""

    name, label, order = "srrl", "SRRL", 110
    source = "Yang et al., ICLR 2021; defaults (CE 1, SR 1, FM 1, 1x1 connector) of SRRL's official code"
    params = (ALPHA, BETA, *CONNECTOR_PARAMS, ALPHA_CE, FM_MODE.replace(default="spatial_mean"), MSE_REDUCTION,
              EXPORT_MODEL, EXPORT_MODULE)
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
