"""``ofd``: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019) as mdistiller runs it.

Defaults are mdistiller's (github.com/megvii-research/mdistiller, ``OFD`` distiller and its CIFAR-100
config): CE weight 1, feature weight 0.001, 1x1 connectors. For every stage after the stem (aligned from the
last one when the depths differ) the student's pre-ReLU map goes through a connector (conv 1x1 without bias
+ BN, He-normal init) and is compared with the teacher's pre-ReLU map (average-pooled to the student's size)
by the partial L2 with margin ``m`` per channel: ``(s - m)^2`` where ``s > m >= t``, ``(s - t)^2`` where
``s > t > m`` and ``t <= 0``, and ``(s - t)^2`` where ``t > 0``; summed over C x H x W, averaged over the
batch, stage i of n weighted ``1 / 2^(n - 1 - i)``. The margin is the expectation of a Gaussian's negative
part from the teacher's BN before the ReLU (scale ``|gamma|``, shift ``beta``):
``m = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|)`` when ``Phi(-beta/|gamma|) > 0.001``, else
``-3 |gamma|``.

mdistiller's loss differs from the paper's text in one place kept here: the stage weights ``1/2^(n-1-i)``.
Pre-activation maps come from ``ZooModel.forward_preact_stages`` (student and teacher) and the margins from
the teacher's ``bn_before_relu``; a student without the first (``supports_preact``) or a teacher without
both (``supports_bn_before_relu`` too: ShuffleNets are students only, as in mdistiller) is refused with the
registered models that have them. Where each family takes its maps is in its module docstring.

The teacher's BatchNorms use the batch's statistics (``ofd_teacher_bn: batch``, the default): mdistiller's
``OFD.train`` puts every child module, the teacher included, in training mode, so the teacher's maps (and
with them the loss) are normalised per batch, not by the running statistics. Here its running statistics are
not updated by those passes (``track_running_stats`` off for the call): nothing the loss sees depends on
them, the teacher's file stays what was given, and resume stays exact. ``ofd_teacher_bn: running`` keeps the
teacher in eval mode, as every other method here does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch
from ..errors import ConfigError
from ..models import models_with
from ..params import Float, Param
from .base import Method, MethodContext, StepResult, probe_stages, register_method


def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel margin (1, C, 1, 1) from a BN's affine parameters (see the module docstring)."""
    values = []
    for gamma, beta in zip(bn.weight.detach().tolist(), bn.bias.detach().tolist()):
        s = abs(gamma)
        cdf = 0.5 * math.erfc((beta / s) / math.sqrt(2)) if s > 0 else 0.0
        if cdf > 0.001:
            values.append(-s * math.exp(-((beta / s) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf + beta)
        else:
            values.append(-3 * s)
    return torch.tensor(values).view(1, -1, 1, 1)


def ofd_distance(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The partial L2 with margin, summed over C x H x W and averaged over the batch."""
    margin = margin.to(source)
    loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin))
            + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0))
            + (source - target) ** 2 * (target > 0))
    return loss.mean(dim=0).sum()


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """The model's BatchNorms normalise by the batch's statistics without updating their running ones."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.training, m.track_running_stats = training, track


TEACHER_BN = ("batch", "running")


def connector(s_channels: int, t_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(s_channels, t_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / t_channels))
    bn = nn.BatchNorm2d(t_channels)
    return nn.Sequential(conv, bn)


NEEDS = {"student": (("supports_preact",), "pre-activation stages"),
         "teacher": (("supports_preact", "supports_bn_before_relu"),
                     "pre-activation stages and the BN behind each map (its margin)")}
"""What OFD reads from each network: the ``ZooModel`` flags that promise it, and how the refusal names it."""


@register_method
class OFD(Method):
    name, label, order = "ofd", "OFD", 70
    source = "Heo et al., ICCV 2019; defaults and loss of mdistiller (megvii-research/mdistiller)"
    params = (
        Param("feat_weight", float, 0.001, ge=0, search=Float(1e-4, 1e-2, log=True),
              doc="weight of the distillation term"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy"),
        Param("ofd_teacher_bn", str, "batch", choices=TEACHER_BN,
              doc="teacher BN statistics: batch (mdistiller's teacher in train mode) or running (eval mode)"),
    )

    def __init__(self, student: nn.Module, teacher: Any, cfg: Mapping[str, Any], ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        for role, model, arch in (("student", student, cfg["student"]), ("teacher", teacher.model, cfg["teacher"])):
            flags, what = NEEDS[role]
            if not all(getattr(model, flag, False) for flag in flags):
                allowed = sorted(set.intersection(*(set(models_with(flag)) for flag in flags)))
                raise ConfigError(f"method 'ofd' needs {what}, which {role} '{arch}' does not have; "
                                  f"{role}s with them: {', '.join(allowed)}")
        s_maps = probe_stages(student, ctx, preact=True)[1:]
        t_maps = probe_stages(teacher.model, ctx, preact=True)[1:]
        n = min(len(s_maps), len(t_maps))
        s_maps, t_maps = s_maps[-n:], t_maps[-n:]
        self.n = n
        self.connectors = nn.ModuleList(connector(s.shape[1], t.shape[1]) for s, t in zip(s_maps, t_maps))
        for i, bn in enumerate(teacher.model.bn_before_relu()[-n:]):
            self.register_buffer(f"margin{i}", bn_margin(bn).to(ctx.device))

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        out = self.student.forward_preact_stages(batch.x)
        logits = self.student.forward_head(out.stages[-1])
        norms = batch_statistics(self.teacher.model) if self.cfg["ofd_teacher_bn"] == "batch" else nullcontext()
        with norms:
            t_pre = self.teacher.outputs(batch, want="preact").preact[1:][-self.n:]
        distill = 0.0
        for i, (s, t) in enumerate(zip(out.preact[1:][-self.n:], t_pre)):
            s = self.connectors[i](s)
            t = F.adaptive_avg_pool2d(t, s.shape[-2:])
            distill = distill + ofd_distance(s, t, getattr(self, f"margin{i}")) / 2 ** (self.n - i - 1)
        losses = {"ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
                  "ofd": self.cfg["feat_weight"] * distill}
        return StepResult(logits, losses)
