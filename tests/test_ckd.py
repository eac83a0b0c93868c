"""Comparative KD: the losses against worked values, the teacher-call budget, a real digits run."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import StopAfter
from trainables.config import resolve_config
from trainables.errors import ConfigError
from trainables.loop import build_trial, train, train_one_epoch
from trainables.losses import kd_loss
from trainables.methods.ckd import ckd_terms, comparative_differences, draw_groups, group_count
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
    small = {"ckd_max_groups": 150} if method == "ckd" else {}  # 150 groups = 300 images per epoch
    return {**student_cfg, "method": method, "teacher_budget": 300, "train_subset": 300, **small, **extra}


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
    trial = build_trial(budget_cfg(student_cfg, method, epochs=2, teacher_cache_view="clean"))
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
        trial = build_trial(budget_cfg(student_cfg, "kd"))  # the default view: one seeded crop+flip per image
        trial.teacher.on_epoch_start(0)
        caches.append(trial.teacher.cache.logits)
    torch.testing.assert_close(caches[0], caches[1])
    clean = build_trial(budget_cfg(student_cfg, "kd", teacher_cache_view="clean"))
    clean.teacher.on_epoch_start(0)
    assert not torch.allclose(clean.teacher.cache.logits, caches[0])


# -- the group sampler (ckd_sampler: groups) ---------------------------------------------------------------------
def all_groups_by_hand(n: int, k: int) -> set[tuple[int, ...]]:
    """Every (sorted A, sorted B) split of k distinct images out of n, from permutations (not the code's way)."""
    a = k - k // 2
    return {tuple(sorted(p[:a])) + tuple(sorted(p[a:])) for p in itertools.permutations(range(n), k)}


@pytest.mark.parametrize(("n", "k", "count"), [(5, 2, 20), (5, 3, 30), (300, 2, 89700), (300, 3, 13365300)])
def test_group_count_is_the_number_of_distinct_groups(n: int, k: int, count: int) -> None:
    assert group_count(n, k) == count  # n(n-1) ordered pairs; C(n,2) * (n-2) for two against one
    if n <= 5:
        assert len(all_groups_by_hand(n, k)) == count


@pytest.mark.parametrize("k", [2, 3])
def test_small_splits_enumerate_every_group(k: int) -> None:
    groups = draw_groups(6, k, max_groups=100_000, seed=0)  # fewer than 5 x max exist: all of them
    rows = [tuple(r) for r in groups.tolist()]
    assert len(rows) == len(set(rows)) == group_count(6, k)
    assert set(rows) == all_groups_by_hand(6, k)
    few = draw_groups(6, k, max_groups=7, seed=0)  # enumerated, then 7 picked
    assert few.shape == (7, k) and {tuple(r) for r in few.tolist()} <= all_groups_by_hand(6, k)


@pytest.mark.parametrize("k", [2, 3])
def test_drawn_groups_are_distinct_seeded_and_hold_distinct_images(k: int) -> None:
    groups = draw_groups(300, k, max_groups=2000, seed=3)  # 89700+ groups exist: drawn at random
    a = k - k // 2
    rows = groups.tolist()
    assert groups.shape == (2000, k) and groups.dtype == torch.long
    assert len({tuple(r) for r in rows}) == 2000  # no group twice
    assert all(len(set(r)) == k and 0 <= min(r) and max(r) < 300 for r in rows)  # k distinct images each
    assert all(r[:a] == sorted(r[:a]) and r[a:] == sorted(r[a:]) for r in rows)  # A and B are sets
    torch.testing.assert_close(draw_groups(300, k, 2000, seed=3), groups)  # a function of the seed
    assert not torch.equal(draw_groups(300, k, 2000, seed=4), groups)
    counts = torch.bincount(groups.reshape(-1), minlength=300).float()  # every image in about 2000k/300 groups
    assert counts.min() > 0 and abs(float(counts.mean()) - 2000 * k / 300) < 1e-6


def test_an_epoch_is_one_pass_over_the_group_set(student_cfg: dict) -> None:
    trial = build_trial(budget_cfg(student_cfg, "ckd", ckd_max_groups=50, batch_size=8, epochs=1))
    groups = trial.method.groups
    assert groups.shape == (50, 2)
    assert torch.equal(groups, build_trial(budget_cfg(student_cfg, "ckd", ckd_max_groups=50)).method.groups)
    seen = []
    for batch in trial.method.train_batches(trial.data.train, {**trial.cfg, "augment": True, "seed": 0}, 0):
        assert batch.x.shape[0] in (16, 4)  # 8 groups of 2 per step, the last step the 2 groups left
        seen += [tuple(r) for r in batch.index.reshape(-1, 2).tolist()]
    assert sorted(seen) == sorted(tuple(r) for r in groups.tolist())  # each group once, whole
    metrics = train_one_epoch(trial, 0)
    assert metrics["train/images"] == 100 and trial.teacher.calls == 300


def test_batch_sampler_keeps_the_earlier_behaviour(student_cfg: dict) -> None:
    trial = build_trial(budget_cfg(student_cfg, "ckd", ckd_sampler="batch", batch_size=32, epochs=1))
    assert trial.method.groups is None
    metrics = train_one_epoch(trial, 0)
    assert metrics["train/images"] == 300  # one pass over the 300 images, groups cut from each batch
    with pytest.raises(ConfigError, match="exceeds batch_size 2"):
        resolve_config(budget_cfg(student_cfg, "ckd", ckd_sampler="batch", batch_size=2, ckd_group_size=3))
    resolve_config(budget_cfg(student_cfg, "ckd", batch_size=2, ckd_group_size=3))  # groups: 2 groups per step


def test_group_sampler_resumes_exactly(student_cfg: dict, tmp_path: Path) -> None:
    cfg = budget_cfg(student_cfg, "ckd", ckd_max_groups=40, batch_size=16, epochs=2, bound_metrics=False)
    whole = RunDirReporter(tmp_path / "whole")
    train(cfg, reporter=whole)
    first = StopAfter(tmp_path / "cut", k=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first)
    rest = RunDirReporter(tmp_path / "cut")
    train(cfg, reporter=rest, resume_from=first.checkpoint_dir)
    keys = ("train/loss", "train/loss_ckd_teacher", "train/loss_ckd_label", "val/top1", "train/images")
    assert [[m[k] for k in keys] for m in whole.history] == [[m[k] for k in keys] for m in first.history + rest.history]


@pytest.mark.slow
def test_ckd_learns_on_300_images_within_a_300_call_budget(student_cfg: dict, tmp_path: Path) -> None:
    """The defaults (group sampler, one augmented crop per image in the cache, raw student logits) learn.

    Measured at one thread (seeds 0, 1, 2): val 49.0 / 41.3 / 50.3 %, test 47.6 / 42.1 / 52.9 %; chance is 10 %.
    """
    cfg = budget_cfg(student_cfg, "ckd", epochs=6, batch_size=32, ckd_max_groups=1000)
    first = StopAfter(tmp_path / "run", k=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first)
    rest = RunDirReporter(tmp_path / "run")  # resume: the cache comes from the checkpoint, not the teacher
    metrics = train(cfg, reporter=rest, resume_from=first.checkpoint_dir)
    history = first.history + rest.history
    assert [m["epoch"] for m in history] == list(range(1, 7))
    assert all(m["teacher_calls"] == 300 and m["train/images"] == 2000 for m in history)
    assert metrics["val/top1"] > 30.0 and metrics["test/top1"] > 30.0
    assert {"train/loss_ckd_teacher", "train/loss_ckd_label"} <= set(metrics)
