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

Defaults (CE 1, SR only, alpha 1, a single 1x1 connector) are the paper's Table-1 (CIFAR-100) setting. The
official code (github.com/HuayuLiArizona/Knowledge-Distillation-Under-Ideal-Joint-Classifier-Assumption,
ImageNet only) trains Table 4 with CE 1 + SR 1 + FM 1 through a 1x1-3x3-1x1 connector (factor 2):
``loss_combination: sr+fm, connector_depth: 3`` (``study/presets/table4_imagenet.yaml``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Batch
from ..errors import ConfigError
from ..params import Choice, Float, Includes, Param
from .base import StepResult, register_method
from .softmax_regression import (
    ALPHA,
    ALPHA_CE,
    BETA,
    CONNECTOR_PARAMS,
    OUTPUT_PARAMS,
    SoftmaxRegressionMethod,
    mse,
)

LOSS_COMBINATIONS = ("sr", "fm", "sr+fm")


@register_method
class IJCKD(SoftmaxRegressionMethod):
    """CE + SR and/or FM through the teacher's frozen classifier (the ideal joint classifier)."""

    name, label, order = "ijckd", "IJCKD", 140
    source = "Li et al., arXiv 2304.11004; defaults of its Table 1 (CE 1, SR 1, 1x1 connector)"
    params = (
        ALPHA_CE.replace(search=Float(0.0, 1.0), doc="CE weight through the teacher head"),
        Param("loss_combination", str, "sr", choices=LOSS_COMBINATIONS, search=Choice(LOSS_COMBINATIONS),
              doc="which terms train besides CE"),
        ALPHA.replace(when=Includes("loss_combination", "sr"), doc="sr weight (only with sr)"),
        BETA.replace(when=Includes("loss_combination", "fm"), doc="fm weight (only with fm)"),
        *CONNECTOR_PARAMS,
        *OUTPUT_PARAMS,
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        combination = cfg["loss_combination"]
        terms = {"alpha_ce": cfg["alpha_ce"]}
        if "sr" in combination.split("+"):
            terms["alpha"] = cfg["alpha"]
        if "fm" in combination.split("+"):
            terms["beta"] = cfg["beta"]
        if all(v == 0 for v in terms.values()):
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
