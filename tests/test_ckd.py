"""Comparative KD: the losses against worked values, the teacher-call budget, a real digits run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainables.config import resolve_config
from trainables.errors import ConfigError
from trainables.loop import build_trial, train, train_one_epoch
from trainables.losses import kd_loss
from trainables.methods.ckd import ckd_terms, comparative_differences
from trainables.reporting import RunDirReporter

# shared/reference/loss_vectors.md, "CKD, k = 2": rows are samples A and B.
ZS = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 0.5, -0.5]])
ZT = torch.tensor([[3.0, 0.0, -2.0, 0.5], [-1.0, 2.0, 0.0, 0.0]])
Y = F.one_hot(torch.tensor([0, 1]), 4).float()


def differences(k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(comparative_differences(v, k) for v in (ZS, ZT, Y))  # type: ignore[return-value]


def test_kl_form_matches_the_worked_values() -> None:
    d_s, d_t, d_y = differences()
    teacher, label = ckd_terms(d_s, d_t, d_y, temperature=4.0, form="kl")
    assert float(teacher) == pytest.approx(0.908619, abs=1e-5)
    assert float(label) == pytest.approx(0.435829, abs=1e-5)
    assert float(1.0 * teacher + label) == pytest.approx(1.344448, abs=1e-5)
    assert float(kd_loss(d_s, d_t, 4.0)) == pytest.approx(0.908619, abs=1e-5)  # the KD row of the reference


def test_mse_form_matches_the_worked_values() -> None:
    teacher, label = ckd_terms(*differences(), temperature=4.0, form="mse")
    assert float(teacher) == pytest.approx(1.625, abs=1e-5)
    assert float(label) == pytest.approx(0.9375, abs=1e-5)
    assert float(teacher + label) == pytest.approx(2.5625, abs=1e-5)


def test_swapping_the_groups_and_shifting_student_logits() -> None:
    d_s, d_t, d_y = differences()
    teacher, _ = ckd_terms(-d_s, -d_t, -d_y, temperature=4.0)
    assert float(teacher) == pytest.approx(0.505185, abs=1e-5)
    shift = torch.tensor([5.0, -3.0, 0.25, 11.0])
    shifted = comparative_differences(ZS + shift, 2)
    for form in ("kl", "mse"):
        base = ckd_terms(d_s, d_t, d_y, 4.0, form)
        moved = ckd_terms(shifted, d_t, d_y, 4.0, form)
        assert all(float(a) == pytest.approx(float(b), abs=1e-6) for a, b in zip(base, moved))


def test_groups_of_three_compare_two_against_one_and_drop_leftovers() -> None:
    values = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)  # 7 rows -> 2 groups, 1 left over
    d = comparative_differences(values, 3)
    expected = torch.stack([values[0:2].mean(0) - values[2], values[3:5].mean(0) - values[5]])
    torch.testing.assert_close(d, expected)
    empty = comparative_differences(values[:2], 3)
    teacher, label = ckd_terms(empty, empty, empty, 4.0)
    assert empty.shape == (0, 2) and float(teacher) == 0.0 and float(label) == 0.0


def budget_cfg(student_cfg: dict, method: str, **extra: object) -> dict:
    return {**student_cfg, "method": method, "teacher_budget": 300, "train_subset": 300, **extra}


def test_budget_needs_a_matching_train_subset(student_cfg: dict) -> None:
    for method in ("ckd", "kd"):
        with pytest.raises(ConfigError, match="set train_subset: 300"):
            resolve_config({**student_cfg, "method": method, "teacher_budget": 300})
        with pytest.raises(ConfigError, match="exceeds teacher_budget"):
            resolve_config(budget_cfg(student_cfg, method, train_subset=400))
    with pytest.raises(ConfigError, match="teacher_cache_view"):
        resolve_config(budget_cfg(student_cfg, "ckd", teacher_cache_view="mixup"))
    with pytest.raises(ConfigError, match="ckd_loss"):
        resolve_config(budget_cfg(student_cfg, "ckd", ckd_loss="l1"))
    resolved = resolve_config(budget_cfg(student_cfg, "ce"))  # the CE baseline: the same 300 labelled images
    assert resolved["train_subset"] == 300


@pytest.mark.parametrize("method", ["ckd", "kd"])
def test_teacher_runs_once_per_image_and_never_in_the_training_loop(student_cfg: dict, method: str) -> None:
    trial = build_trial(budget_cfg(student_cfg, method, epochs=2))
    assert len(trial.data.train) == 300 and trial.teacher.calls == 0
    trial.teacher.on_epoch_start(0)
    assert trial.teacher.calls == 300  # exactly n calls, all before the first step
    cache = trial.teacher.cache.logits.clone()
    train_one_epoch(trial, 0)  # the loop calls on_epoch_start(0) again: the cache is reused
    train_one_epoch(trial, 1)
    assert trial.teacher.calls == 300
    torch.testing.assert_close(trial.teacher.cache.logits, cache)
    batch = next(trial.data.train.batches(300, shuffle=False, augment=False))  # cache = clean-view logits
    with torch.no_grad():
        torch.testing.assert_close(cache[batch.index], trial.teacher.model(batch.x), rtol=1e-4, atol=1e-4)


def test_augmented_cache_view_is_seeded(student_cfg: dict) -> None:
    caches = []
    for _ in range(2):
        trial = build_trial(budget_cfg(student_cfg, "kd", teacher_cache_view="augmented"))
        trial.teacher.on_epoch_start(0)
        caches.append(trial.teacher.cache.logits)
    torch.testing.assert_close(caches[0], caches[1])
    clean = build_trial(budget_cfg(student_cfg, "kd"))
    clean.teacher.on_epoch_start(0)
    assert not torch.allclose(clean.teacher.cache.logits, caches[0])


class StopAfter(RunDirReporter):
    def __init__(self, run_dir: Path, stop_after: int) -> None:
        super().__init__(run_dir)
        self.stop_after = stop_after

    def __call__(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        super().__call__(metrics, checkpoint_dir)
        if metrics["epoch"] == self.stop_after:
            raise KeyboardInterrupt("simulated preemption")


@pytest.mark.slow
def test_ckd_learns_on_300_images_within_a_300_call_budget(student_cfg: dict, tmp_path: Path) -> None:
    cfg = budget_cfg(student_cfg, "ckd", epochs=8, batch_size=32)
    first = StopAfter(tmp_path / "run", stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first)
    rest = RunDirReporter(tmp_path / "run")  # resume: the cache comes from the checkpoint, not the teacher
    metrics = train(cfg, reporter=rest, resume_from=first.checkpoint_dir)
    history = first.history + rest.history
    assert [m["epoch"] for m in history] == list(range(1, 9))
    assert all(m["teacher_calls"] == 300 for m in history)
    assert metrics["val/top1"] > 30.0 and metrics["test/top1"] > 30.0  # chance is 10%
    assert {"train/loss_ckd_teacher", "train/loss_ckd_label"} <= set(metrics)
