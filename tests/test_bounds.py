"""Error-bound diagnostics (IJCKD Theorem 1): exact terms, the inequality, undefined terms stay NaN."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.diagnostics.bounds import BOUND_KEYS, bound_terms
from trainables.loop import train


def test_terms_by_hand():
    y = torch.tensor([0, 1, 2, 3, 4])
    teacher = torch.tensor([0, 1, 2, 3, 0])  # 1 error in 5
    via = torch.tensor([0, 1, 2, 0, 0])  # teacher head on student features: differs from teacher once
    student = torch.tensor([0, 1, 1, 0, 0])  # differs from `via` once, wrong 3 times
    m = bound_terms(student, teacher, y, via)
    assert m["bound/teacher_err"] == 20.0
    assert m["bound/student_err"] == 60.0
    assert m["bound/delta1"] == 20.0
    assert m["bound/delta2"] == 20.0
    assert m["bound/rhs"] == 60.0  # tight here
    assert m["fidelity/top1"] == 60.0


def test_missing_teacher_head_view_gives_nan_not_a_number():
    y = torch.tensor([0, 1, 1])
    m = bound_terms(torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), y, None)
    assert m["bound/student_err"] == pytest.approx(100 / 3)
    assert m["fidelity/top1"] == pytest.approx(100 / 3)
    assert all(math.isnan(m[k]) for k in ("bound/delta1", "bound/delta2", "bound/rhs"))


def test_inequality_holds_for_any_predictions():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        n, k = 50, int(torch.randint(2, 6, (1,), generator=g))
        y, t, v, s = (torch.randint(0, k, (n,), generator=g) for _ in range(4))
        m = bound_terms(s, t, y, v)
        assert m["bound/student_err"] <= m["bound/rhs"] + 1e-9


@pytest.mark.slow
def test_kd_run_logs_the_bound_and_it_holds(student_cfg, tmp_path):
    """kd with equal widths (resnet8 and resnet20 both end in 64 channels): the teacher head reads the
    student's map directly, every term is defined and the inequality holds on the trained models."""
    history = []
    cfg = {**student_cfg, "method": "kd", "epochs": 2, "train_subset": 512}
    train(cfg, reporter=lambda m, _: history.append(m), workdir=tmp_path)
    for m in history:
        assert set(BOUND_KEYS) <= set(m)
        assert all(math.isfinite(m[k]) for k in BOUND_KEYS)
        assert m["bound/student_err"] <= m["bound/rhs"] + 1e-9
        assert m["bound/student_err"] == pytest.approx(100.0 - m["val/top1"], abs=1e-9)
        assert 0.0 <= m["fidelity/top1"] <= 100.0
    assert history[-1]["bound/teacher_err"] < 50.0  # the session teacher is a real, trained one


def test_width_mismatch_without_connector_is_nan_with_a_reason(student_cfg, wide_digits_teacher, tmp_path):
    cfg = {**student_cfg, "method": "kd", "epochs": 1, "train_subset": 64, "teacher": wide_digits_teacher["arch"],
           "teacher_checkpoint": wide_digits_teacher["checkpoint"]}
    with pytest.warns(UserWarning, match="64 channels, the teacher's head reads 128"):
        final = train(cfg, workdir=tmp_path)
    assert all(math.isnan(final[k]) for k in ("bound/delta1", "bound/delta2", "bound/rhs"))
    assert math.isfinite(final["bound/teacher_err"]) and math.isfinite(final["fidelity/top1"])
    assert final["bound/student_err"] == pytest.approx(100.0 - final["val/top1"], abs=1e-9)


def test_connector_makes_the_terms_defined_across_widths(student_cfg, wide_digits_teacher, tmp_path):
    cfg = {**student_cfg, "method": "srrl", "epochs": 1, "train_subset": 64, "teacher": wide_digits_teacher["arch"],
           "teacher_checkpoint": wide_digits_teacher["checkpoint"]}
    final = train(cfg, workdir=tmp_path)
    assert all(math.isfinite(final[k]) for k in BOUND_KEYS)
    assert final["bound/student_err"] <= final["bound/rhs"] + 1e-9


def test_switch_off_and_no_teacher(student_cfg, tmp_path):
    off = train({**student_cfg, "method": "kd", "epochs": 1, "train_subset": 64, "bound_metrics": False},
                workdir=tmp_path)
    assert not set(BOUND_KEYS) & set(off)
    ce = train({**student_cfg, "method": "ce", "epochs": 1, "train_subset": 64}, workdir=tmp_path)
    assert not set(BOUND_KEYS) & set(ce)
