"""The shared loop: real training on digits, exact resume, clear failures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import StopAfter
from trainables.checkpoint import load_state
from trainables.config import resolve_config, scaled_milestones
from trainables.errors import CheckpointError, ConfigError, NonFiniteLossError
from trainables.loop import train
from trainables.reporting import RunDirReporter

REQUIRED_METRICS = {
    "epoch", "lr", "train/loss", "train/top1", "val/top1", "val/top5",
    "teacher_calls", "time/epoch_s", "throughput/img_s",
}


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_student_learns_on_digits(student_cfg, tmp_path, method):
    reporter = RunDirReporter(tmp_path)
    final = train({**student_cfg, "method": method}, reporter=reporter, workdir=tmp_path)
    assert final["val/top1"] > 40.0 and final["test/top1"] > 40.0  # chance is 10 %
    assert REQUIRED_METRICS <= set(final)
    assert final["train/loss_ce"] > 0
    if method == "kd":
        assert final["train/loss_kd"] > 0
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert "test/top1" not in json.loads(lines[0])  # the test split is touched at the end only


def test_kd_counts_every_teacher_image(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "kd", "epochs": 2, "train_subset": 200}
    final = train(cfg, workdir=tmp_path)
    assert final["teacher_calls"] == 2 * 200  # one forward per training image per epoch, none in eval


def test_resume_reproduces_an_uninterrupted_run_exactly(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "kd", "epochs": 3, "train_subset": 256}
    straight = RunDirReporter(tmp_path / "straight")
    train(cfg, reporter=straight, workdir=tmp_path / "straight")

    broken = StopAfter(tmp_path / "broken", k=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=broken, workdir=tmp_path / "broken")
    assert load_state(broken.checkpoint_dir)["epoch"] == 2
    resumed = RunDirReporter(tmp_path / "broken")
    train(cfg, reporter=resumed, resume_from=broken.checkpoint_dir, workdir=tmp_path / "broken")

    a = load_state(straight.checkpoint_dir)
    b = load_state(resumed.checkpoint_dir)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert a["teacher"] == b["teacher"]  # the teacher-call count survives the restart
    assert straight.history[-1]["val/top1"] == resumed.history[-1]["val/top1"]
    assert [m["epoch"] for m in resumed.history] == [3]  # only the missing epoch was trained


def test_non_finite_loss_names_the_term_and_epoch(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "kd", "kd_weight": math.inf, "epochs": 2, "train_subset": 64}
    with pytest.raises(NonFiniteLossError, match=r"term\(s\) kd at epoch 1, step 1 "):
        train(cfg, workdir=tmp_path)


def test_teacher_weights_never_change(student_cfg, tmp_path, digits_teacher):
    before = torch.load(digits_teacher["checkpoint"], weights_only=True)["model"]
    final = train({**student_cfg, "method": "fitnet", "epochs": 1, "train_subset": 128}, workdir=tmp_path)
    assert math.isfinite(final["train/loss_hint"])
    after = torch.load(digits_teacher["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dkd_runs_with_warmup(student_cfg, tmp_path):
    reporter = RunDirReporter(tmp_path)
    train({**student_cfg, "method": "dkd", "epochs": 2, "warmup_epochs": 4, "train_subset": 128},
          reporter=reporter, workdir=tmp_path)
    first, second = reporter.history
    assert first["train/loss_nckd"] > 0 and second["train/loss_nckd"] > 0


def test_teacher_method_writes_its_trajectory(digits_teacher):
    from pathlib import Path

    files = sorted(p.name for p in Path(digits_teacher["trajectory_dir"]).iterdir())
    assert files == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt", "epoch_0004.pt", "epoch_0005.pt", "final.pt"]
    meta = torch.load(Path(digits_teacher["trajectory_dir"]) / "epoch_0002.pt", weights_only=True)
    assert meta["epoch"] == 2 and meta["arch"] == "resnet20" and "model" in meta
    assert digits_teacher["metrics"]["test/top1"] > 50.0


def test_config_errors_are_one_clear_line(student_cfg):
    with pytest.raises(ConfigError, match=r"unknown config key 'temprature'.*did you mean 'temperature'"):
        resolve_config({**student_cfg, "method": "kd", "temprature": 3})
    with pytest.raises(ConfigError, match=r"unknown method 'kdd'.*did you mean 'kd'.*allowed:.*dkd"):
        resolve_config({**student_cfg, "method": "kdd"})
    with pytest.raises(ConfigError, match=r"unknown student architecture 'resnet9'.*allowed:.*resnet8"):
        resolve_config({**student_cfg, "method": "kd", "student": "resnet9"})
    with pytest.raises(ConfigError, match="needs teacher_checkpoint"):
        resolve_config({"method": "kd", "teacher": "resnet20"})
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        resolve_config({**student_cfg, "method": "kd", "temperature": 0})
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        resolve_config({**student_cfg, "method": "ce", "epochs": 0})


def test_missing_teacher_checkpoint_is_reported_before_training(student_cfg, tmp_path):
    with pytest.raises(CheckpointError, match="teacher checkpoint not found"):
        train({**student_cfg, "method": "kd", "teacher_checkpoint": str(tmp_path / "nope.pt")}, workdir=tmp_path)


def test_recipe_defaults():
    cfg = resolve_config({"method": "ce", "student": "resnet8"})
    assert cfg["lr"] == 0.05 and cfg["epochs"] == 240 and cfg["lr_milestones"] == [150, 180, 210]
    assert cfg["batch_size"] == 64 and cfg["weight_decay"] == 5e-4 and cfg["nesterov"] is True
    assert scaled_milestones(24) == [15, 18, 21]


def test_teacher_checkpoint_of_another_architecture_is_refused(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "kd", "teacher": "resnet32"}  # the file holds a resnet20
    expected = r"teacher 'resnet32' \(10 classes\) does not fit.*missing keys \(60\).*more\)"
    with pytest.raises(CheckpointError, match=expected):
        train(cfg, workdir=tmp_path)
