"""What the feature-distillation methods of RepDistiller's benchmark (AT, VID, RKD, PKT, ...) share.

RepDistiller (github.com/HobbitLong/RepDistiller, ``train_student.py`` and ``helper/loops.py``) trains every
one of them as ``gamma * CE + alpha * KD + beta * L_method`` and reads the networks' ``feats`` list:
``feat[1:-1]`` (every stage's output after the stem) for the stage-wise losses and ``feat[-1]`` (the
globally pooled last map, the penultimate embedding) for the relational ones. In this zoo those are
``forward_stages(x)[1:]`` and the spatial mean of ``forward_stages(x)[-1]``; for WRN, MobileNetV2 and
ShuffleV2 the last stage is one step past RepDistiller's last tap (see ``ZooModel.forward_stages``), its
pooled embedding the same.

The relational and likelihood losses are computed in fp32 with autocast off: pairwise distances and
log-variances in bf16 would lose what they measure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..losses import kd_loss
from ..params import Param

CE_WEIGHT = Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy (RepDistiller's -r, 1)")
KD_WEIGHT = Param("kd_weight", float, 0.0, ge=0,
                  doc="weight of Hinton's KL on top (RepDistiller's -a; 0 in its benchmark of this method)")
TEMPERATURE = Param("temperature", float, 4.0, gt=0, doc="softmax temperature of the KD term (RepDistiller's kd_T)")
CE_KD_PARAMS = (CE_WEIGHT, KD_WEIGHT, TEMPERATURE)


def ce_kd_terms(cfg: Mapping[str, Any], logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """``{ce: ce_weight * CE}`` plus ``{kd: kd_weight * T^2 KL}`` when ``kd_weight`` > 0 (the names stay fixed
    for a trial, so a loss term never appears half-way)."""
    terms = {"ce": cfg["ce_weight"] * F.cross_entropy(logits, y)}
    if cfg["kd_weight"] > 0:
        terms["kd"] = cfg["kd_weight"] * kd_loss(logits, teacher_logits.to(logits.dtype), cfg["temperature"])
    return terms


def full_precision(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``t``'s device: the loss inside runs in the dtype of its (fp32) inputs."""
    return torch.autocast(t.device.type, enabled=False)


def intermediate(stages: list[torch.Tensor]) -> list[torch.Tensor]:
    """RepDistiller's ``feat[1:-1]``: every stage output after the stem."""
    return list(stages[1:])


def stage_pairs(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> list[tuple[int, int]]:
    """Index pairs (student, teacher) of ``intermediate`` maps, first with first (RepDistiller ``zip``s the
    two lists, so a network with more stages drops its last ones)."""
    return [(i, i) for i in range(min(len(student), len(teacher)))]


def match_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps to the other's spatial size (RepDistiller's AT, VID, NST)."""
    size_s, size_t = tuple(f_s.shape[-2:]), tuple(f_t.shape[-2:])
    if size_s == size_t:
        return f_s, f_t
    if size_s[0] > size_t[0]:
        return F.adaptive_avg_pool2d(f_s, size_t), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, size_s)


def embedding(feature_map: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``feat[-1]``: the globally average-pooled last map, ``(B, C)``, in fp32."""
    return feature_map.float().mean(dim=(2, 3))
