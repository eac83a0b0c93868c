"""``wsld``: weighted soft label distillation (Zhou et al., ICLR 2021, "Rethinking soft labels for knowledge
distillation: a bias-variance tradeoff perspective").

Per sample, ``r = CE_s / (CE_t + 1e-7)`` with the student's and the teacher's cross-entropy on the label
(on detached logits, temperature 1), weight ``w = 1 - exp(-max(r, 0))``; the soft term is
``T^2 * mean_batch(w * H(p_t^T, p_s^T))`` and the loss ``ce_weight * CE + wsld_alpha * soft``.

Defaults: the authors' CIFAR-100 setting (paper, Sec. 5; their code
github.com/bellymonster/Weighted-Soft-Label-Distillation):
``temperature`` 4, ``wsld_alpha`` 2.25, CE weight 1. The authors' code weighs the soft *cross-entropy*
``-sum p_t log p_s`` (``wsld_soft: ce``, the default); the paper writes the KL, which differs per sample by the
teacher's entropy (same gradient for the student, different weighted value): ``wsld_soft: kl`` uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import Batch
from ..params import Float, Param
from .base import Method, StepResult, register_method


def wsld_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
              soft: str = "ce") -> torch.Tensor:
    """``T^2 * mean(w * soft)`` with WSLD's per-sample weights ``w`` (see the module docstring)."""
    log_ps = F.log_softmax(student / temperature, dim=1)
    pt = F.softmax(teacher / temperature, dim=1)
    per = -(pt * log_ps).sum(1)
    if soft == "kl":
        per = per + (pt * F.log_softmax(teacher / temperature, dim=1)).sum(1)
    ce_s = F.cross_entropy(student.detach(), labels, reduction="none")
    ce_t = F.cross_entropy(teacher.detach(), labels, reduction="none")
    weight = 1 - torch.exp(-torch.clamp(ce_s / (ce_t + 1e-7), min=0))
    return temperature**2 * (weight * per).mean()


@register_method
class WSLD(Method):
    name, label, order = "wsld", "WSLD", 90
    source = ("Zhou et al., ICLR 2021; defaults of the authors' CIFAR-100 setting "
              "(bellymonster/Weighted-Soft-Label-Distillation)")
    params = (
        Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature"),
        Param("wsld_alpha", float, 2.25, ge=0, search=Float(0.5, 5.0, log=True),
              doc="weight of the weighted soft term"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy"),
        Param("wsld_soft", str, "ce", choices=("ce", "kl"), search=None,
              doc="soft term: cross-entropy to p_t (authors' code) or KL (paper)"),
    )
    uses_teacher_store = True

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher.outputs(batch).logits
        soft = wsld_loss(logits, teacher_logits, batch.y, self.cfg["temperature"], self.cfg["wsld_soft"])
        losses = {"ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
                  "wsld": self.cfg["wsld_alpha"] * soft}
        return StepResult(logits, losses)
