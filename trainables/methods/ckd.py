"""``ckd``: Comparative Knowledge Distillation (Wilf et al., arXiv 2311.02253), under a teacher-call budget.

The teacher labels each of the n training images once (``trainables.teacher.budget``); the student then
learns from *differences* between samples, which multiplies the training signal without new teacher
calls. Each shuffled batch is cut into groups of k consecutive samples (``ckd_group_size``, 2 or 3),
split into A (the first k - k//2) and B (the last k//2); for student logits, cached teacher logits and
one-hot labels, d = mean over A - mean over B. Loss (``ckd_loss: kl``, the paper's first version):

    beta * T^2 * KL(softmax(d_t/T) || softmax(d_s/T)) + T^2 * KL(softmax(d_y/T) || softmax(d_s/T))

(KL summed over classes, averaged over groups); ``ckd_loss: mse`` is the later version with squared
errors averaged over classes and groups, no temperature. Samples left over when the batch size is not a
multiple of k are forwarded but take no part in the loss.

Both forms only see differences, so a vector added to every student logit changes nothing: the loss
leaves the student's input-independent logit offset free, and in short runs it drifts far enough to
bias every prediction towards one class. The paper does not say how it predicts; ``ckd_anchor`` chooses.
``teacher_mean`` (default) predicts with student(x) - mean_s + mean_t after each training epoch, mean_s
the student's mean logits on the n training images (clean view, eval mode; one extra forward pass over
them per epoch) and mean_t the mean of the cached teacher logits (no teacher call): the offset that makes
the student's difference to the average training image match the teacher's. ``none`` predicts with the
raw student logits. The offset is a buffer of the method, saved in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Batch
from ..errors import ConfigError
from ..losses import kd_loss
from ..params import Choice, Float, Param
from ..teacher import TeacherPlan
from ..teacher.budget import validate_budget
from .base import Method, StepResult, register_method

CKD_FORMS = ("kl", "mse")
CKD_ANCHORS = ("teacher_mean", "none")


def comparative_differences(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(b, C) rows -> (b // k, C): per group of k consecutive rows, mean of the first k - k//2 minus the rest."""
    k = int(group_size)
    groups = values.shape[0] // k
    grouped = values[: groups * k].reshape(groups, k, *values.shape[1:])
    split = k - k // 2
    return grouped[:, :split].mean(1) - grouped[:, split:].mean(1)


def ckd_terms(
    d_student: torch.Tensor, d_teacher: torch.Tensor, d_labels: torch.Tensor, temperature: float, form: str = "kl"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher term, label term) on differences, unweighted; see the module docstring for both forms."""
    d_student = d_student.float()
    if d_student.shape[0] == 0:  # a batch smaller than one group: no pairs, no loss
        zero = d_student.sum() * 0.0
        return zero, zero
    if form == "mse":
        return F.mse_loss(d_student, d_teacher.float()), F.mse_loss(d_student, d_labels.float())
    return kd_loss(d_student, d_teacher.float(), temperature), kd_loss(d_student, d_labels.float(), temperature)


@register_method
class CKD(Method):
    name, label, order = "ckd", "CKD", 170
    source = "Wilf et al., arXiv 2311.02253"
    params = (
        Param("ckd_group_size", int, 2, ge=2, search=Choice((2, 3)), doc="k: samples per comparison group"),
        Param("ckd_beta", float, 1.0, ge=0, search=Float(0.1, 10.0, log=True), doc="weight of the teacher term"),
        Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature (kl form)"),
        Param("ckd_loss", str, "kl", choices=CKD_FORMS, doc="kl (first version) or mse (later version)"),
        Param("ckd_anchor", str, "teacher_mean", choices=CKD_ANCHORS, doc="how the free logit offset is set"),
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        if cfg["ckd_group_size"] > cfg["batch_size"]:
            raise ConfigError(
                f"ckd_group_size {cfg['ckd_group_size']} exceeds batch_size {cfg['batch_size']}; "
                "a batch must hold at least one group"
            )
        validate_budget(cfg)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("logit_offset", torch.zeros(self.ctx.num_classes))

    @classmethod
    def teacher_plan(cls, cfg: Mapping[str, Any]) -> TeacherPlan:
        """All teacher calls happen once per image, before the first training step of the trial."""
        return TeacherPlan(label_once=True)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        k = int(self.cfg["ckd_group_size"])
        onehot = F.one_hot(batch.y, logits.shape[1]).float()
        d_s = comparative_differences(logits, k)
        d_t = comparative_differences(self.teacher.outputs(batch).logits, k)
        d_y = comparative_differences(onehot, k)
        teacher_term, label_term = ckd_terms(d_s, d_t, d_y, self.cfg["temperature"], self.cfg["ckd_loss"])
        losses = {"ckd_teacher": float(self.cfg["ckd_beta"]) * teacher_term, "ckd_label": label_term}
        return StepResult(logits.detach() + self.logit_offset, losses)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x) + self.logit_offset

    @torch.no_grad()
    def on_train_epoch_end(self, epoch: int) -> None:
        """Re-anchor the free logit offset (``ckd_anchor: teacher_mean``) before the epoch is evaluated."""
        cache = self.teacher.cache  # the teacher's logits of every training image
        if self.cfg["ckd_anchor"] != "teacher_mean" or cache is None:
            return
        was_training = self.training
        self.eval()
        total = torch.zeros_like(self.logit_offset)
        count = 0
        for batch in self.ctx.extras["data"].train.batches(
            int(self.cfg["eval_batch_size"]), shuffle=False, augment=False
        ):
            total += self.student(batch.x).float().sum(0)
            count += int(batch.y.shape[0])
        self.train(was_training)
        self.logit_offset.copy_(cache.logits.mean(0) - total / max(count, 1))
