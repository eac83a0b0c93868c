"""Trial checkpoints hold only what ``torch.load(weights_only=True)`` reads; anything else is refused unrun.

Real training on digits (1 epoch, 64 images) for every method, real files cut on disk, a real pickled
callable that would leave a marker file if it ever ran.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import StopAfter
from trainables import checkpoint as ckpt
from trainables.errors import CheckpointError, CheckpointWriteError, UnsafeCheckpointError
from trainables.loop import _trial_state, build_trial, train, train_one_epoch
from trainables.methods import METHODS
from trainables.reporting import RunDirReporter

REPO = Path(__file__).resolve().parents[1]


def _method_cfg(method: str, student_cfg: dict, digits_teacher: dict) -> dict:
    cfg = {**student_cfg, "method": method, "epochs": 1, "train_subset": 64}
    if method == "teacher":
        cfg = {"method": "teacher", "teacher": "resnet8", "dataset": "digits", "epochs": 1, "train_subset": 64}
    if method == "online":
        cfg["teacher_trajectory"] = digits_teacher["trajectory_dir"]
    if method in ("kd", "ckd"):
        cfg["teacher_budget"] = 64  # the teacher source's budget cache (its logits) goes into the checkpoint
    if method == "crd":
        cfg["nce_k"] = 32  # the memory banks and negatives' generator go into the checkpoint; small k for speed
    return cfg


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_methods_checkpoint_loads_weights_only(method, student_cfg, digits_teacher, tmp_path):
    """The state the loop saves after a real training step: modules, optimizer (momentum), scheduler, RNGs,
    the teacher source's state (call count, budget cache), the method's extra state and the config."""
    trial = build_trial(_method_cfg(method, student_cfg, digits_teacher), tmp_path)
    train_one_epoch(trial, 0, max_steps=1)
    ckpt.save_state(tmp_path / "ckpt", _trial_state(trial, 1))
    state = torch.load(tmp_path / "ckpt" / ckpt.STATE_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and {"method", "optimizer", "scheduler", "rng", "extra", "config"} <= set(state)
    assert state["optimizer"]["state"]  # momentum buffers exist after the step
    if method in ("kd", "ckd"):
        assert state["teacher"]["cache"]["logits"].shape[0] == 64


def test_rng_states_round_trip_exactly():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    saved = ckpt.rng_state()
    first = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(saved)
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


class _LeavesMarker:
    """Unpickling this runs ``touch <marker>``: the proof that a loader executed code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_a_callable_is_refused_and_nothing_runs(student_cfg, tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "checkpoint"
    bad.mkdir()
    torch.save({"epoch": 1, "rng": {"numpy": _LeavesMarker(marker)}}, bad / ckpt.STATE_FILE)
    with pytest.raises(UnsafeCheckpointError) as info:
        ckpt.load_state(bad)
    message = str(info.value)
    assert "\n" not in message and "system" in message and "convert-checkpoint" in message
    cfg = {**student_cfg, "method": "ce", "epochs": 2, "train_subset": 64}
    with pytest.raises(UnsafeCheckpointError):
        train(cfg, resume_from=bad, workdir=tmp_path)  # a resume refuses it the same way
    args = ["method=ce", "epochs=2", "train_subset=64", "student=resnet8", "dataset=digits"]
    out = subprocess.run([sys.executable, "-m", "trainables", *args, "--out", str(tmp_path), "--resume"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "not a weights-only trial checkpoint" in out.stderr
    assert not marker.exists()


def _old_format(state: dict) -> dict:
    """A checkpoint as the previous version wrote it: numpy's and Python's RNG states as their own objects."""
    old = dict(state)
    rng = state["rng"]
    old["rng"] = {
        **rng,
        "numpy": ("MT19937", rng["numpy"]["key"].numpy().astype(np.uint32), rng["numpy"]["pos"],
                  rng["numpy"]["has_gauss"], rng["numpy"]["gauss"]),
        "python": (rng["python"]["version"], tuple(rng["python"]["internal"]), rng["python"]["gauss_next"]),
    }
    return old


def test_an_old_checkpoint_converts_and_resumes_exactly(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "kd", "epochs": 2, "train_subset": 128}
    straight = RunDirReporter(tmp_path / "straight")
    train(cfg, reporter=straight, workdir=tmp_path / "straight")

    first = StopAfter(tmp_path / "old", k=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first, workdir=tmp_path / "old")  # the same run, stopped after epoch 1
    state = ckpt.load_state(first.checkpoint_dir)
    torch.save(_old_format(state), first.checkpoint_dir / ckpt.STATE_FILE)
    with pytest.raises(UnsafeCheckpointError, match=r"numpy.*convert-checkpoint"):
        ckpt.load_state(first.checkpoint_dir)

    out = subprocess.run([sys.executable, "-m", "trainables", "convert-checkpoint", str(tmp_path / "old")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 checkpoint(s) converted" in out.stdout
    assert (first.checkpoint_dir / "state.pt.unsafe").is_file()
    converted = ckpt.load_state(first.checkpoint_dir)
    assert torch.equal(converted["rng"]["numpy"]["key"], state["rng"]["numpy"]["key"])
    assert converted["rng"]["python"] == state["rng"]["python"]

    resumed = RunDirReporter(tmp_path / "old")
    train(cfg, reporter=resumed, resume_from=first.checkpoint_dir, workdir=tmp_path / "old")
    assert resumed.history[-1]["val/top1"] == straight.history[-1]["val/top1"]
    assert resumed.history[-1]["train/loss"] == straight.history[-1]["train/loss"]


def test_a_cut_checkpoint_is_named_as_damaged(student_cfg, tmp_path):
    reporter = RunDirReporter(tmp_path)
    train({**student_cfg, "method": "ce", "epochs": 1, "train_subset": 64}, reporter=reporter, workdir=tmp_path)
    path = reporter.checkpoint_dir / ckpt.STATE_FILE
    assert ckpt.damage(reporter.checkpoint_dir) is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "not a complete torch file" in ckpt.damage(reporter.checkpoint_dir)
    with pytest.raises(CheckpointError, match=r"state.pt is damaged"):
        ckpt.load_state(reporter.checkpoint_dir)


def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path):
    """A real 1 MiB tmpfs: the second, larger state does not fit; the first stays loadable, no partial file."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}): the full-disk test needs root")
    try:
        ckpt.save_state(mount / "ckpt", {"epoch": 1, "weights": torch.ones(10_000)})
        with pytest.raises(CheckpointWriteError, match=r"no space left on the device .* epoch 2 .*previous checkpoint"):
            ckpt.save_state(mount / "ckpt", {"epoch": 2, "weights": torch.ones(300_000)})
        assert sorted(p.name for p in (mount / "ckpt").iterdir()) == [ckpt.STATE_FILE]
        assert ckpt.damage(mount / "ckpt") is None and ckpt.load_state(mount / "ckpt")["epoch"] == 1
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_staging_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    """A worker killed while Tune copied its checkpoint left a staging folder; the next process's first
    checkpoint removes it, and never the folder of a process that still runs."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited: nothing runs under its pid (unless reused)
    host = ckpt._host()
    left = tmp_path / f"{ckpt.STAGING_PREFIX}{host}-{dead_pid}-abc"
    live = tmp_path / f"{ckpt.STAGING_PREFIX}{host}-{os.getpid()}-def"
    elsewhere = tmp_path / f"{ckpt.STAGING_PREFIX}other-node-7-{dead_pid}-ghi"  # a TMPDIR shared with another host
    old_unnamed, new_unnamed = tmp_path / f"{ckpt.STAGING_PREFIX}oldname", tmp_path / f"{ckpt.STAGING_PREFIX}newname"
    for folder in (left, live, elsewhere, old_unnamed, new_unnamed):
        folder.mkdir()
        (folder / ckpt.STATE_FILE).write_bytes(b"x" * 1024)
    os.utime(old_unnamed, (0, 0))
    monkeypatch.setattr(ckpt.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ckpt, "_swept", False)
    with ckpt.staging_dir() as staging:
        assert staging.parent == tmp_path and staging.name.startswith(f"{ckpt.STAGING_PREFIX}{host}-{os.getpid()}-")
        named = ckpt._STAGING_NAME.fullmatch(staging.name)  # the sweep reads back what it writes
        assert named and named["host"] == host and named["pid"] == str(os.getpid())
        ckpt.save_state(staging, {"epoch": 1})
    assert not staging.exists(), "the staging folder outlived its checkpoint"
    assert not left.exists() and not old_unnamed.exists()
    assert live.is_dir() and elsewhere.is_dir() and new_unnamed.is_dir()
