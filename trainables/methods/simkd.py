"""``simkd``: Knowledge Distillation with the Reused Teacher Classifier (Chen et al., CVPR 2022).

The only loss is the feature MSE between the connector output and the teacher's last map (mean over
every element); the student predicts through the connector, global pooling and the teacher's frozen
classifier, in training metrics, at evaluation and in the exported model. Defaults follow the SimKD
paper: the 1x1-3x3-1x1 projector (``connector_depth: 3``) with ``connector_factor: 2``; the IJCKD
paper's Table 1 reproduction uses ``connector_depth: 1``.
"""

from __future__ import annotations

import torch

from ..data import Batch
from .base import StepResult, register_method
from .softmax_regression import CONNECTOR_DEPTH, CONNECTOR_FACTOR, OUTPUT_PARAMS, SoftmaxRegressionMethod


@register_method
class SimKD(SoftmaxRegressionMethod):
    """Feature MSE only; predicts through the connector and the teacher's frozen classifier."""

    name, label, order = "simkd", "SimKD", 120
    source = "Chen et al., CVPR 2022; defaults (1x1-3x3-1x1 projector, factor 2) of SimKD's official code"
    params = (CONNECTOR_DEPTH.replace(default=3), CONNECTOR_FACTOR, *OUTPUT_PARAMS)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        mapped = self.to_teacher_space(self.student.forward_features(batch.x))
        teacher_out = self.teacher.outputs(batch, want="features")
        with torch.no_grad():  # logits only feed train/top1; the loss never sees them
            logits = self.teacher.head(mapped)
        return StepResult(logits, {"fm": self.feature_loss(mapped, teacher_out.features)})
