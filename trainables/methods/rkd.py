"""``rkd``: relational knowledge distillation (Park et al., CVPR 2019), distance- and angle-wise, as
RepDistiller benchmarks it.

On the penultimate embeddings ``e`` (the pooled last maps, RepDistiller's ``feat[-1]``) of a batch:

- distance-wise: ``psi_D(i, j) = ||e_i - e_j|| / mu``, ``mu`` the mean of the batch's non-zero distances;
  the loss is the Huber loss (``smooth_l1``, delta 1) between student and teacher ``psi_D``;
- angle-wise: ``psi_A(i, j, k) = <(e_j - e_i)/||e_j - e_i||, (e_k - e_i)/||e_k - e_i||>``, the same Huber loss.

Total ``ce_weight * CE (+ kd_weight KD) + rkd_distance_weight * L_D + rkd_angle_weight * L_A``.

Where RepDistiller (``distiller_zoo/RKD.py``) differs from the paper's text, this follows RepDistiller, whose
numbers the comparison tables report:

- the Huber losses are averaged over *all* ``B^2`` pairs and ``B^3`` triplets, the zero diagonal
  (``i = j``) and the degenerate triplets (``j = i`` or ``k = i``: an all-zero difference normalises to
  the zero vector, its cosine is 0 on both sides) included, where the paper sums over distinct pairs and
  triplets; only ``mu`` leaves the zeros out;
- distances come from ``|e_i|^2 + |e_j|^2 - 2 <e_i, e_j>`` clamped at 1e-12 before the square root, the
  diagonal then set to 0;
- the teacher's relations are computed without gradient (the teacher is frozen anyway).

One guard RepDistiller lacks: a batch whose embeddings are all equal has no non-zero distance, and
``mu`` would be the mean of nothing (NaN); here every distance is then 0.

Defaults: distance weight 25, angle weight 50 (``RKDLoss(w_d=25, w_a=50)``), run with ``-a 0 -b 1``
(``scripts/run_cifar_distill.sh``), i.e. CE weight 1 and KD weight 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Batch
from ..errors import ConfigError
from ..params import Float, Param
from .base import Method, StepResult, register_method
from .feature_kd import CE_KD_PARAMS, ce_kd_terms, embedding, full_precision


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``(B, D) -> (B, B)`` Euclidean distances via the Gram matrix, clamped at ``eps`` before the root,
    with an exact zero diagonal (RepDistiller's ``RKDLoss.pdist``)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Distances over their mean over the non-zero entries (all zero when there is none)."""
    d = pairwise_distances(e)
    positive = d > 0
    mu = (d * positive).sum() / positive.sum().clamp(min=1)
    return d / torch.where(mu > 0, mu, torch.ones_like(mu))  # no host sync: d is all zero when mu is


def angles(e: torch.Tensor) -> torch.Tensor:
    """``(B, D) -> (B^3,)``: entry ``(i, j, k)`` the cosine between ``e_j - e_i`` and ``e_k - e_i``."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_losses(e_s: torch.Tensor, e_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance loss, angle loss), unweighted, fp32; the teacher side without gradient."""
    with full_precision(e_s):
        e_s, e_t = e_s.float().flatten(1), e_t.float().flatten(1)
        with torch.no_grad():
            t_d, t_a = normalised_distances(e_t), angles(e_t)
        distance = F.smooth_l1_loss(normalised_distances(e_s), t_d)
        angle = F.smooth_l1_loss(angles(e_s), t_a)
    return distance, angle


@register_method
class RKD(Method):
    """``ce_weight * CE + kd_weight * KD + w_d * RKD-D + w_a * RKD-A`` on the pooled last maps."""

    name, label, order = "rkd", "RKD", 50
    source = "Park et al., CVPR 2019; RepDistiller's benchmark (distance 25, angle 50)"
    params = (
        Param("rkd_distance_weight", float, 25.0, ge=0, search=Float(1.0, 100.0, log=True),
              doc="weight of the distance-wise loss (RepDistiller's w_d)"),
        Param("rkd_angle_weight", float, 50.0, ge=0, search=Float(2.0, 200.0, log=True),
              doc="weight of the angle-wise loss (RepDistiller's w_a)"),
        *CE_KD_PARAMS,
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        if int(cfg.get("batch_size") or 2) < 2:
            raise ConfigError(f"method 'rkd' relates the examples of a batch: batch_size must be >= 2, got "
                              f"{cfg.get('batch_size')}")

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats)
        teacher_out = self.teacher.outputs(batch, want="features")
        distance, angle = rkd_losses(embedding(feats), embedding(teacher_out.features))
        losses = ce_kd_terms(self.cfg, logits, teacher_out.logits, batch.y)
        losses["rkd_distance"] = self.cfg["rkd_distance_weight"] * distance
        losses["rkd_angle"] = self.cfg["rkd_angle_weight"] * angle
        return StepResult(logits, losses)
