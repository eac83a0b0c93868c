"""``pkt``: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as RepDistiller benchmarks it.

On the penultimate embeddings (the pooled last maps, RepDistiller's ``feat[-1]``) of a batch: each
embedding is divided by its L2 norm (+ eps), the cosine kernel ``K_ij = (cos(e_i, e_j) + 1) / 2`` is
turned into conditional probabilities by normalising each row, ``P_ij = K_ij / sum_k K_ik``, and the loss
is ``mean over i, j of P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps))``, eps = 1e-7, weighted by
``pkt_beta`` on top of ``ce_weight * CE`` (+ ``kd_weight`` KD).

Where RepDistiller (``distiller_zoo/PKT.py``, taken from the authors' code) differs from the paper's text,
this follows RepDistiller, whose numbers the comparison tables report:

- the KL divergence of each row is *averaged* with all others over the ``B^2`` entries (the paper sums
  over ``j`` and averages over ``i``: ``B`` times this value), which is why the weight is as large as 30000;
- the self-similarity ``K_ii = 1`` stays in each row's normalisation and in the mean;
- eps is added inside the log on both sides, and to the norm before dividing (an all-zero embedding
  then normalises to zero instead of NaN).

Defaults: ``pkt_beta = 30000``, CE weight 1 and KD weight 0 (``scripts/run_cifar_distill.sh``: ``--distill
pkt -a 0 -b 30000``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..data import Batch
from ..errors import ConfigError
from ..params import Float, Param
from .base import Method, StepResult, register_method
from .feature_kd import CE_KD_PARAMS, ce_kd_terms, embedding, full_precision

EPS = 1e-7


def conditional_probabilities(e: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``(B, D) -> (B, B)``: rows of ``(cos + 1) / 2`` normalised to sum to 1."""
    unit = e / (e.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(e_s: torch.Tensor, e_t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``mean_ij P^t_ij log((P^t_ij + eps) / (P^s_ij + eps))`` in fp32 (unweighted)."""
    with full_precision(e_s):
        p_s = conditional_probabilities(e_s.float().flatten(1), eps)
        p_t = conditional_probabilities(e_t.float().flatten(1), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_method
class PKT(Method):
    """``ce_weight * CE + kd_weight * KD + pkt_beta * PKT`` on the pooled last maps."""

    name, label, order = "pkt", "PKT", 60
    source = "Passalis & Tefas, ECCV 2018; RepDistiller's benchmark (beta 30000)"
    params = (
        Param("pkt_beta", float, 30000.0, ge=0, search=Float(3000.0, 100000.0, log=True),
              doc="weight of the PKT term (RepDistiller's -b)"),
        *CE_KD_PARAMS,
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        if int(cfg.get("batch_size") or 2) < 2:
            raise ConfigError(f"method 'pkt' relates the examples of a batch: batch_size must be >= 2, got "
                              f"{cfg.get('batch_size')}")

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        feats = self.student.forward_features(batch.x)
        logits = self.student.forward_head(feats)
        teacher_out = self.teacher.outputs(batch, want="features")
        losses = ce_kd_terms(self.cfg, logits, teacher_out.logits, batch.y)
        losses["pkt"] = self.cfg["pkt_beta"] * pkt_loss(embedding(feats), embedding(teacher_out.features))
        return StepResult(logits, losses)
