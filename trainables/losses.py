"""Loss functions with their published definitions and reductions spelled out.

Each docstring says the reduction, because distillation papers differ on it and the worked values in
``shared/reference/loss_vectors.md`` pin the ones chosen here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over the batch."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def soft_target_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(target || softmax(s/T)) for an explicit target distribution (batchmean)."""
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    return F.kl_div(log_p_s, target_probs, reduction="batchmean") * t * t


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022): returns (alpha * TCKD, beta * NCKD).

    TCKD is the binary KL between target/non-target probabilities; NCKD is the KL between the
    distributions over non-target classes (the target logit masked out). Both scaled by T^2 and
    averaged over the batch.
    """
    t = float(temperature)
    gt_mask = F.one_hot(target, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits / t, dim=1)
    b_s = torch.stack([(p_s * gt_mask).sum(1), (p_s * ~gt_mask).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt_mask).sum(1), (p_t * ~gt_mask).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s.clamp_min(1e-12)), b_t, reduction="batchmean") * t * t
    masked = gt_mask.float() * 1000.0
    log_q_s = F.log_softmax(student_logits / t - masked, dim=1)
    q_t = F.softmax(teacher_logits / t - masked, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="batchmean") * t * t
    return alpha * tckd, beta * nckd


def feature_mse(student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of the feature maps (F.mse_loss default reduction)."""
    return F.mse_loss(student_feats, teacher_feats)
