"""Error-bound terms of the IJCKD paper's Theorem 1, measured each epoch on the validation split.

    err(f_s) <= err(g_t o phi_t) + Delta1 + Delta2
    Delta1 = P[f_s(x) != g_t(phi_s(x))]            student's prediction vs the teacher's head on student features
    Delta2 = P[g_t(phi_s(x)) != g_t(phi_t(x))]     teacher's head on student vs on teacher features

``f_s`` is the method's prediction path (what ``val/top1`` scores), ``g_t`` the teacher's frozen pooling +
classifier, ``phi_s`` the student's last feature map (through the method's connector where it has one),
``phi_t`` the teacher's. With top-1 disagreement rates counted on the same examples the inequality is
the triangle inequality of the 0-1 disagreement, so it holds exactly: a measured violation is a bug.

Where the student has no head of its own (SimKD, IJCKD, teacher_head) ``f_s = g_t o phi_s`` and Delta1 is 0
by construction. Where ``phi_s`` has another width than the teacher's head reads and the method has no
connector (e.g. ``kd`` with a wider student), ``g_t(phi_s)`` does not exist: Delta1, Delta2 and the
right-hand side are NaN, and a warning says why, once per trial. All values are percentages, like
``val/top1``; ``fidelity/top1`` is the top-1 agreement of ``f_s`` with the teacher.

The pass reads the teacher trunk directly (``teacher.model``): diagnostic images do not count toward
``teacher_calls`` or a ``teacher_budget``, which measure supervision in training. The loop runs it
(``trainables.diagnostics.epoch``); the method supplies its views through ``Method.bound_views``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch

BOUND_KEYS = (
    "bound/teacher_err",
    "bound/student_err",
    "bound/delta1",
    "bound/delta2",
    "bound/rhs",
    "fidelity/top1",
)


def bound_terms(
    student_pred: torch.Tensor,
    teacher_pred: torch.Tensor,
    target: torch.Tensor,
    via_teacher_head: torch.Tensor | None,
) -> dict[str, float]:
    """The bound metrics (percent) from top-1 class indices of the same examples.

    ``via_teacher_head`` holds the teacher head's predictions on student features, or None where they do
    not exist (then Delta1, Delta2 and the right-hand side are NaN).
    """
    n = max(int(target.numel()), 1)

    def rate(mask: torch.Tensor) -> float:
        return 100.0 * float(mask.sum().item()) / n

    teacher_err = rate(teacher_pred != target)
    out = {
        "bound/teacher_err": teacher_err,
        "bound/student_err": rate(student_pred != target),
        "fidelity/top1": rate(student_pred == teacher_pred),
    }
    if via_teacher_head is None:
        out.update({"bound/delta1": math.nan, "bound/delta2": math.nan, "bound/rhs": math.nan})
        return out
    delta1 = rate(student_pred != via_teacher_head)
    delta2 = rate(via_teacher_head != teacher_pred)
    out.update({"bound/delta1": delta1, "bound/delta2": delta2, "bound/rhs": teacher_err + delta1 + delta2})
    return out


@torch.inference_mode()
def bound_metrics(
    method: Any, split: Any, batch_size: int, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """One pass over ``split`` in eval mode: teacher and student predictions, then :func:`bound_terms`."""
    teacher = method.teacher
    was_training = method.training
    method.eval()
    preds: dict[str, list[torch.Tensor]] = {"student": [], "teacher": [], "via": [], "y": []}
    reason = ""
    for batch in split.batches(batch_size, shuffle=False, augment=False):
        ctx = (
            torch.autocast(batch.x.device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            teacher_logits = teacher.model(batch.x)
            pred, via, reason = method.bound_views(batch.x)
        preds["teacher"].append(teacher_logits.argmax(1))
        preds["student"].append(pred.argmax(1))
        preds["y"].append(batch.y)
        if via is not None:
            preds["via"].append(via.argmax(1))
    method.train(was_training)
    if not preds["y"]:
        return {key: math.nan for key in BOUND_KEYS}
    via_all = torch.cat(preds["via"]) if len(preds["via"]) == len(preds["y"]) else None
    if via_all is None and reason and not getattr(method, "_bound_reason_warned", False):
        warnings.warn(reason, stacklevel=2)
        object.__setattr__(method, "_bound_reason_warned", True)
    return bound_terms(torch.cat(preds["student"]), torch.cat(preds["teacher"]), torch.cat(preds["y"]), via_all)
