"""``vid``: variational information distillation (Ahn et al., CVPR 2019), as RepDistiller benchmarks it.

For each stage after the stem (RepDistiller's ``feat[1:-1]``, paired first with first) a regressor
``mu(f_s)`` (1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv, no biases, hidden width = the teacher's
channels) predicts the teacher's map, with a learned per-channel variance
``sigma_c^2 = softplus(alpha_c) + eps``. The loss is the Gaussian negative log-likelihood without its
constant, ``0.5 * ((t - mu)^2 / sigma_c^2 + log sigma_c^2)``, averaged over batch, channels and positions,
summed over the stages, weighted by ``vid_beta``, on top of ``ce_weight * CE`` (+ ``kd_weight`` KD). Maps of
different sizes are matched first by average-pooling the larger one (RepDistiller's ``VIDLoss.forward``).

The regressors and the ``alpha_c`` are modules of the method: the optimizer trains them with the student
(same lr and weight decay, as in RepDistiller's ``trainable_list``) and the trial checkpoint holds them.

Where RepDistiller (``distiller_zoo/VID.py``, taken from the authors' code) differs from the paper's text,
this follows RepDistiller, whose numbers the comparison tables report:

- the paper sums the log-likelihood over channels and positions; the code averages over every element
  (batch, channels, positions), which changes the loss's scale and so the meaning of ``vid_beta``;
- ``alpha_c`` starts at ``softplus^-1(init_var - eps)``, so every variance starts at ``init_var`` = 5;
  the paper does not state an initial variance.

Defaults: ``vid_beta = 1``, CE weight 1, KD weight 0 (``scripts/run_cifar_distill.sh``: ``--distill vid
-a 0 -b 1``), ``init_pred_var = 5.0`` and ``eps = 1e-5`` (``VIDLoss``'s defaults).

Error-bound diagnostics read the student's last map through the last stage's regressor (its predicted
mean of the teacher's last map) and the teacher's head; that pair exists when the last stage of both
networks is paired (equal stage counts), else the bound terms are NaN with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..data import Batch
from ..params import Float, Param
from .base import Method, MethodContext, StepResult, probe_stages, register_method
from .feature_kd import CE_KD_PARAMS, ce_kd_terms, full_precision, intermediate, match_size, stage_pairs


def inverse_softplus(value: float) -> float:
    """``a`` with ``log(1 + exp(a)) = value`` (value > 0)."""
    return math.log(math.expm1(value))


class VIDRegressor(nn.Module):
    """One stage's variational head: the mean regressor and the per-channel variance parameter."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_var: float, eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((out_channels,), inverse_softplus(init_var - eps)))
        self.eps = float(eps)

    def variance(self) -> torch.Tensor:
        """``softplus(alpha_c) + eps`` per channel, fp32."""
        return torch.nn.functional.softplus(self.log_scale.float()) + self.eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """The stage's NLL: pool the larger map, regress the mean, average ``0.5 (d^2 / var + log var)``."""
        f_s, f_t = match_size(f_s, f_t)
        return vid_nll(self.mean(f_s), f_t, self.variance())


def vid_nll(mean: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """``mean over (B, C, H, W) of 0.5 * ((target - mean)^2 / var_c + log var_c)`` in fp32."""
    with full_precision(mean):
        var = variance.float().view(1, -1, 1, 1)
        return (0.5 * ((mean.float() - target.float()) ** 2 / var + torch.log(var))).mean()


@register_method
class VID(Method):
    """``ce_weight * CE + kd_weight * KD + vid_beta * sum_stages NLL(teacher stage | regressor(student stage))``."""

    name, label, order = "vid", "VID", 40
    source = "Ahn et al., CVPR 2019; RepDistiller's benchmark (beta 1, initial variance 5)"
    params = (
        Param("vid_beta", float, 1.0, ge=0, search=Float(0.1, 10.0, log=True),
              doc="weight of the summed NLL terms (RepDistiller's -b)"),
        Param("vid_init_var", float, 5.0, gt=0, doc="every variance's starting value (RepDistiller's init_pred_var)"),
        Param("vid_eps", float, 1e-5, gt=0, doc="floor added to the softplus variance"),
        *CE_KD_PARAMS,
    )

    def __init__(self, student: nn.Module, teacher: Any, cfg: Mapping[str, Any], ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        g_s = intermediate(probe_stages(student, ctx))
        g_t = intermediate(probe_stages(teacher.model, ctx))
        self.pairs = stage_pairs(g_s, g_t)
        self.last_stage_paired = self.pairs[-1] == (len(g_s) - 1, len(g_t) - 1)
        self.teacher_last_size = tuple(g_t[-1].shape[-2:])
        init_var, eps = float(cfg["vid_init_var"]), float(cfg["vid_eps"])
        self.regressors = nn.ModuleList(
            VIDRegressor(g_s[i].shape[1], g_t[j].shape[1], g_t[j].shape[1], init_var, eps) for i, j in self.pairs
        )

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        stages = self.student.forward_stages(batch.x)
        logits = self.student.forward_head(stages[-1])
        teacher_out = self.teacher.outputs(batch, want="stages")
        g_s, g_t = intermediate(stages), intermediate(teacher_out.stages)
        nll = sum(reg(g_s[i], g_t[j]) for reg, (i, j) in zip(self.regressors, self.pairs))
        losses = ce_kd_terms(self.cfg, logits, teacher_out.logits, batch.y)
        losses["vid"] = self.cfg["vid_beta"] * nll
        return StepResult(logits, losses)

    def bound_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """The teacher's head on the last regressor's mean prediction of the teacher's last map."""
        feats = self.student.forward_features(x)
        pred = self.student.forward_head(feats)
        if not self.last_stage_paired:
            return pred, None, (
                f"method 'vid': the networks' last stages are not paired ({len(self.pairs)} stage pairs), so no "
                "regressor predicts the teacher's last map: bound/delta1, bound/delta2 and bound/rhs are NaN"
            )
        if feats.shape[-2] > self.teacher_last_size[0]:  # as in training: the larger map is pooled first
            feats = torch.nn.functional.adaptive_avg_pool2d(feats, self.teacher_last_size)
        mapped = self.regressors[-1].mean(feats)
        return pred, self.teacher.head(mapped), ""
