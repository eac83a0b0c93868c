"""``ijckd``: Knowledge Distillation Under Ideal Joint Classifier Assumption (Li et al., 2023).

The student predicts with the teacher's frozen classifier on its connected features,
``logits_s = teacher_head(conn(F_s))``, and trains on
``alpha_ce * CE(logits_s, y)`` plus the terms ``loss_combination`` picks:

* ``sr``: ``alpha * MSE(logits_s, z_t)`` (softmax regression on the logits; the default)
* ``fm``: ``beta * MSE(conn(F_s), F_t)`` (feature matching)
* ``sr+fm``: both

Naming: the paper's Table 3 ablates the cross-entropy weight; that weight is ``alpha_ce`` here, and
``alpha`` / ``beta`` weigh the SR / FM terms (as in SRRL). MSE is ``F.mse_loss``'s mean over batch x
classes by default (the worked value 0.949459 of ``shared/reference/loss_vectors.md``);
``mse_reduction: batchmean`` sums over classes instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Batch
from ..errors import ConfigError
from .base import StepResult, check_choice, register_method
from .softmax_regression import FAMILY_DEFAULTS, SoftmaxRegressionMethod, mse

LOSS_COMBINATIONS = ("sr", "fm", "sr+fm")


@register_method
class IJCKD(SoftmaxRegressionMethod):
    name = "ijckd"
    defaults = {**FAMILY_DEFAULTS, "loss_combination": "sr", "alpha_ce": 1.0, "alpha": 1.0, "beta": 1.0}
    summary = "IJCKD: CE + SR and/or FM through the teacher's frozen classifier (ideal joint classifier)"

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        SoftmaxRegressionMethod.validate_connector_keys(cfg)
        check_choice("loss_combination", cfg.get("loss_combination", "sr"), LOSS_COMBINATIONS)
        terms = {"alpha_ce": cfg.get("alpha_ce", 1.0)}
        combination = cfg.get("loss_combination", "sr")
        if "sr" in combination.split("+"):
            terms["alpha"] = cfg.get("alpha", 1.0)
        if "fm" in combination.split("+"):
            terms["beta"] = cfg.get("beta", 1.0)
        if all(float(v) == 0 for v in terms.values()):
            raise ConfigError(
                f"ijckd with loss_combination '{combination}' trains nothing: "
                f"at least one of {', '.join(terms)} must be > 0"
            )

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        mapped = self.to_teacher_space(self.student.forward_features(batch.x))
        logits = self.teacher.head(mapped)
        want = "features" if "fm" in self.cfg["loss_combination"].split("+") else "logits"
        teacher_out = self.teacher.outputs(batch, want=want)
        return StepResult(logits, self.loss_terms(logits, teacher_out.logits, batch.y, mapped, teacher_out.features))

    def loss_terms(
        self,
        logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor,
        mapped: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms for student logits (through the teacher head) and the teacher's outputs."""
        terms = self.cfg["loss_combination"].split("+")
        losses = {"ce": self.cfg["alpha_ce"] * F.cross_entropy(logits, target)}
        if "sr" in terms:
            losses["sr"] = self.cfg["alpha"] * mse(logits, teacher_logits.to(logits.dtype), self.mse_reduction)
        if "fm" in terms:
            losses["fm"] = self.cfg["beta"] * self.feature_loss(mapped, teacher_features)
        return losses
