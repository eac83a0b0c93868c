"""``ckd``: Comparative Knowledge Distillation (Wilf et al., arXiv 2311.02253), under a teacher-call budget.

The teacher labels each of the n training images once (``trainables.teacher.budget``); the student then
learns from *differences* between samples, which multiplies the training signal without new teacher
calls. A group holds k distinct images (``ckd_group_size``, 2 or 3), split into A (the first k - k//2)
and B (the last k//2); for student logits, cached teacher logits and one-hot labels, d = mean over A -
mean over B. Loss (``ckd_loss: kl``, the paper's first version):

    beta * T^2 * KL(softmax(d_t/T) || softmax(d_s/T)) + T^2 * KL(softmax(d_y/T) || softmax(d_s/T))

(KL summed over classes, averaged over groups); ``ckd_loss: mse`` is the later version with squared
errors averaged over classes and groups, no temperature.

Where the groups come from (``ckd_sampler``):

* ``groups`` (default, the official code's sampler): a fixed set of up to ``ckd_max_groups`` (100,000, the
  official ``max_ckd_samples``) distinct groups of k distinct training images, drawn once from a generator
  seeded by the trial seed (``draw_groups``), so a resumed trial rebuilds the same set. An epoch is one
  pass over the set in a seeded shuffled order, ``batch_size`` groups (``batch_size * k`` images, each
  augmented on its own) per step, as the official DataLoader over groups.
* ``batch``: this project's earlier sampler: each shuffled batch of ``batch_size`` images is cut into
  groups of k consecutive samples (n/k comparisons per epoch); leftovers are forwarded but not in the loss.

Both forms only see differences, so a vector added to every student logit changes nothing: the loss
leaves the student's input-independent logit offset free. The paper predicts with the raw student logits
(``ckd_anchor: none``, the default). ``teacher_mean`` is a calibration added by this project, not the
paper's: after each training epoch the method predicts with student(x) - mean_s + mean_t, mean_s the
student's mean logits on the n training images (clean view, eval mode; one extra forward pass over them
per epoch, not counted in ``train/images``) and mean_t the mean of the cached teacher logits (no teacher
call). It changes evaluation only, never training. The offset is a buffer of the method, saved in every
checkpoint.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import epoch_generator
from ..data import Batch, Split
from ..errors import ConfigError
from ..losses import kd_loss
from ..params import Choice, Equals, Float, Param
from ..teacher import TeacherPlan
from ..teacher.budget import validate_budget
from .base import Method, StepResult, register_method

CKD_FORMS = ("kl", "mse")
CKD_ANCHORS = ("none", "teacher_mean")
CKD_SAMPLERS = ("groups", "batch")
ENUMERATE_BELOW = 5
"""As the official code: when fewer than 5 x ``max_groups`` distinct groups exist, enumerate them all and pick
from that list; otherwise draw random groups and drop repeats."""


def group_count(n: int, k: int) -> int:
    """Distinct groups of k distinct images out of n, A (k - k//2) and B (k//2) each an unordered set."""
    a = k - k // 2
    return math.comb(n, a) * math.comb(n - a, k - a)


def draw_groups(n: int, k: int, max_groups: int, seed: int) -> torch.Tensor:
    """(G, k) int64 split indices: G = min(max_groups, group_count(n, k)) distinct groups, a function of the
    arguments alone. Each row holds k distinct indices, A (first k - k//2) and B (rest) each sorted, and no
    row repeats; the rows are in the order they were drawn."""
    if n < k:
        raise ConfigError(f"ckd_group_size {k} exceeds the {n} training images; a group needs k distinct images")
    a = k - k // 2
    generator = torch.Generator().manual_seed(int(seed) * 1_000_033 + 101)
    total = group_count(n, k)
    if total < ENUMERATE_BELOW * max_groups:
        every = _every_group(n, k, a)
        if len(every) <= max_groups:
            return every
        return every[torch.randperm(len(every), generator=generator)[:max_groups]]
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < max_groups:
        want = max_groups - len(seen)
        rows = torch.randint(0, n, (want + want // 8 + 16, k), generator=generator)
        rows = torch.cat([rows[:, :a].sort(1).values, rows[:, a:].sort(1).values], 1)
        for row in rows.tolist():
            if len(set(row)) == k:
                seen.setdefault(tuple(row), None)
                if len(seen) == max_groups:
                    break
    return torch.tensor(list(seen), dtype=torch.long)


def _every_group(n: int, k: int, a: int) -> torch.Tensor:
    """All distinct groups, for each k-subset each choice of its A positions (A and B sorted)."""
    rows = []
    for combo in itertools.combinations(range(n), k):
        for pos in itertools.combinations(range(k), a):
            rows.append([combo[i] for i in pos] + [combo[i] for i in range(k) if i not in pos])
    return torch.tensor(rows, dtype=torch.long).reshape(-1, k)


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
        Param("ckd_anchor", str, "none", choices=CKD_ANCHORS,
              doc="prediction: raw student logits (none, the paper) or shifted to the teacher's mean (a calibration)"),
        Param("ckd_sampler", str, "groups", choices=CKD_SAMPLERS,
              doc="groups: a fixed seeded set of random groups, an epoch one pass over it (official code); "
                  "batch: consecutive samples of each shuffled batch"),
        Param("ckd_max_groups", int, 100_000, ge=1, when=Equals("ckd_sampler", "groups"),
              doc="size of the group set (the official max_ckd_samples); fewer when fewer groups exist"),
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        if cfg["ckd_sampler"] == "batch" and cfg["ckd_group_size"] > cfg["batch_size"]:
            raise ConfigError(
                f"ckd_group_size {cfg['ckd_group_size']} exceeds batch_size {cfg['batch_size']}; "
                "a batch must hold at least one group (ckd_sampler: batch)"
            )
        validate_budget(cfg)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("logit_offset", torch.zeros(self.ctx.num_classes))
        self.groups: torch.Tensor | None = None
        if self.cfg["ckd_sampler"] == "groups":
            n = len(self.ctx.extras["data"].train)
            k, cap = int(self.cfg["ckd_group_size"]), int(self.cfg["ckd_max_groups"])
            self.groups = draw_groups(n, k, cap, int(self.cfg["seed"]))

    def train_batches(self, split: Split, cfg: Mapping[str, Any], epoch: int) -> Iterator[Batch]:
        """``ckd_sampler: groups``: the group set in a shuffled order, ``batch_size`` groups per step, drawn
        from the (seed, epoch) generator alone."""
        if self.groups is None:
            return super().train_batches(split, cfg, epoch)
        generator = epoch_generator(int(cfg["seed"]), epoch)
        order = self.groups[torch.randperm(len(self.groups), generator=generator)].reshape(-1)
        k = int(self.groups.shape[1])
        return split.ordered_batches(order, int(cfg["batch_size"]) * k, augment=bool(cfg["augment"]),
                                     generator=generator)

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
