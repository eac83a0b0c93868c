"""Faults a long study meets, injected for real on the CPU: a trial's worker killed with SIGKILL mid-epoch, its
newest checkpoint cut on disk, the disk filling while a checkpoint is written, and a non-finite loss (which
must not be retried). Real Ray Tune on the shared local Ray (2 CPUs), real training on digits.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from study.layout import experiment_trials, read_results
from study.runner import run_study
from study.spec import validate
from study.trainable import EPOCH_LOG, VERDICT, WARNINGS, _damage, _read_meta

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
COMPARED = ("train/loss", "val/top1", "test/top1")


def _spec_data(tmp_path: Path, name: str, **over) -> dict:
    return {
        "name": name,
        "storage_path": str(tmp_path),
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["ce"],
        "config": {"epochs": EPOCHS, "batch_size": 64, "train_subset": 256},
        "resources": {"cpu": 1},
        "max_failures": 1,
        "checkpoint_keep": EPOCHS,
        **over,
    }


def _final(trial_dir: Path) -> dict:
    last = read_results(trial_dir)[-1]
    assert last["epoch"] == EPOCHS
    return {k: last[k] for k in COMPARED}


def _epoch_log(trial_dir: Path) -> list[dict]:
    path = trial_dir / EPOCH_LOG
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _complete_epochs(trial_dir: Path) -> list[int]:
    """Epochs of the trial's complete checkpoints on disk (read-only: no warnings written)."""
    out = []
    for child in trial_dir.glob("checkpoint_*"):
        meta = _read_meta(child)
        if meta is not None and _damage(child) is None:
            out.append(meta["epoch"])
    return sorted(out)


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory) -> dict:
    """The final metrics of the faults' trial run without any fault."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    study_dir = run_study(validate(_spec_data(tmp, "straight")), verbose=0, report=False)
    (trial,) = experiment_trials(study_dir / "grid-ce")
    assert trial["status"] == "TERMINATED"
    return _final(trial["dir"])


class Saboteur(threading.Thread):
    """Watches the study's only trial; once it has ``after`` complete checkpoints, runs ``act(trial_dir, pid)``."""

    def __init__(self, exp_dir: Path, after: int, act, pattern: str = "ce_*") -> None:
        super().__init__(daemon=True)
        self.exp_dir, self.after, self.act, self.pattern = exp_dir, after, act, pattern
        self.done = threading.Event()
        self.stop = threading.Event()
        self.record: dict = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for trial_dir in self.exp_dir.glob(self.pattern):
                log = _epoch_log(trial_dir)
                if len(_complete_epochs(trial_dir)) >= self.after and log:
                    self.record = self.act(trial_dir, log[-1]["pid"]) or {}
                    self.record.update(trial_dir=trial_dir, pid=log[-1]["pid"])
                    self.done.set()
                    return
            time.sleep(0.05)


def _run_with(spec, saboteur: Saboteur) -> Path:
    saboteur.start()
    try:
        study_dir = run_study(spec, verbose=0, report=False)
    finally:
        saboteur.stop.set()
        saboteur.join(timeout=10)
    assert saboteur.done.is_set(), "the trial finished before the fault could be injected"
    return study_dir


def _attempts(log: list[dict]) -> list[list[int]]:
    """Epochs trained by each process, in order of the log."""
    attempts: list[list[int]] = []
    last_pid = None
    for line in log:
        if line["pid"] != last_pid:
            attempts.append([])
            last_pid = line["pid"]
        attempts[-1].append(line["epoch"])
    return attempts


def test_a_worker_killed_mid_epoch_is_retried_from_its_newest_checkpoint(uninterrupted, tmp_path):
    def kill(trial_dir: Path, pid: int) -> dict:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # the process is gone: what is on disk now is what the retry finds
        return {"newest": _complete_epochs(trial_dir)[-1]}

    saboteur = Saboteur(tmp_path / "killed" / "grid-ce", after=1, act=kill)
    study_dir = _run_with(validate(_spec_data(tmp_path, "killed")), saboteur)
    (trial,) = experiment_trials(study_dir / "grid-ce")
    assert trial["status"] == "TERMINATED"
    first, second = _attempts(_epoch_log(trial["dir"]))  # exactly one retry, in another process
    newest = saboteur.record["newest"]
    assert newest < EPOCHS, "the trial had finished when it was killed"
    assert first[: newest] == list(range(1, newest + 1))
    assert second == list(range(newest + 1, EPOCHS + 1))  # continued after its newest checkpoint
    assert _final(trial["dir"]) == uninterrupted


def _kd_spec(tmp_path: Path, name: str, teacher_file: Path, **config) -> dict:
    """One kd trial on a seeded resnet8 teacher file, 2 chunks of the teacher stream an epoch (16 batches)."""
    return _spec_data(tmp_path, name, methods=["kd"],
                      teacher={"train": False, "checkpoints": {"resnet8": str(teacher_file)}},
                      config={"epochs": EPOCHS, "batch_size": 16, "train_subset": 256, **config})


def test_a_worker_killed_on_the_teacher_stream_is_retried_to_an_uninterrupted_runs_metrics(ray_session, tmp_path):
    """Killed mid-epoch while it writes and reads the study's teacher stream; the retry reads the chunks it
    finds, computes the rest, and ends where a run without the stream ends."""
    import torch

    from analysis.load import load_study
    from analysis.report import teacher_passes
    from study.state import status_table
    from trainables import models

    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pt"
    torch.save({"model": models.create("resnet8", num_classes=10).state_dict()}, teacher_file)
    straight_dir = run_study(validate(_kd_spec(tmp_path, "straight", teacher_file, teacher_stream=False)),
                             verbose=0, report=False)
    (straight,) = experiment_trials(straight_dir / "grid-kd")
    assert not (straight_dir / "teacher_stream").exists()

    def kill(trial_dir: Path, pid: int) -> dict:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        return {"newest": _complete_epochs(trial_dir)[-1]}

    saboteur = Saboteur(tmp_path / "killed" / "grid-kd", after=1, act=kill, pattern="kd_*")
    study_dir = _run_with(validate(_kd_spec(tmp_path, "killed", teacher_file)), saboteur)
    (trial,) = experiment_trials(study_dir / "grid-kd")
    assert trial["status"] == "TERMINATED"
    first, second = _attempts(_epoch_log(trial["dir"]))  # one retry, in another process
    assert saboteur.record["newest"] < EPOCHS and second[-1] == EPOCHS
    assert _final(trial["dir"]) == _final(straight["dir"])
    last = read_results(trial["dir"])[-1]
    assert last["teacher_calls"] == 256 * EPOCHS >= last["teacher_calls_computed"] > 0
    chunks = sorted(p.relative_to(study_dir / "teacher_stream").parts[1:]
                    for p in (study_dir / "teacher_stream").rglob("chunk_*.pt"))
    assert chunks == [(f"epoch_{e:04d}", f"chunk_{c:05d}.pt") for e in range(EPOCHS) for c in range(2)]
    assert re.search(rf"teacher stream: [\d.]+ KiB in {EPOCHS} epoch\(s\)", status_table(study_dir))
    assert teacher_passes(load_study(study_dir).trials) == (last["teacher_calls_computed"], 256 * EPOCHS, 1)


def test_a_cut_newest_checkpoint_is_passed_over_with_a_warning(uninterrupted, tmp_path):
    def cut_then_kill(trial_dir: Path, pid: int) -> dict:
        os.kill(pid, signal.SIGSTOP)  # frozen: it writes nothing while its newest checkpoint is cut
        newest = max(_complete_epochs(trial_dir))
        folder = next(c for c in trial_dir.glob("checkpoint_*") if (_read_meta(c) or {}).get("epoch") == newest)
        state = folder / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # what a crash mid-write leaves
        os.kill(pid, signal.SIGKILL)
        return {"newest": newest, "cut": state}

    saboteur = Saboteur(tmp_path / "cut" / "grid-ce", after=2, act=cut_then_kill)
    study_dir = _run_with(validate(_spec_data(tmp_path, "cut")), saboteur)
    (trial,) = experiment_trials(study_dir / "grid-ce")
    assert trial["status"] == "TERMINATED"
    newest, cut = saboteur.record["newest"], saboteur.record["cut"]
    assert newest < EPOCHS, "the trial had finished when its checkpoint was cut"
    warnings = (trial["dir"] / WARNINGS).read_text()
    assert str(cut) in warnings and "older complete checkpoint" in warnings
    first, second = _attempts(_epoch_log(trial["dir"]))
    assert second == list(range(newest, EPOCHS + 1))  # from the previous complete checkpoint (epoch newest-1)
    assert _final(trial["dir"]) == uninterrupted


def test_a_non_finite_loss_is_not_retried(ray_session, tmp_path):
    """lr x 1e14 after epoch 1 diverges in epoch 2; no checkpoint before the end, so a retry would redo epoch 1."""
    config = {"epochs": 2, "batch_size": 64, "train_subset": 256, "lr_milestones": [1], "checkpoint_every": 2}
    spec = validate(_spec_data(tmp_path, "nonfinite", config=config, max_failures=2,
                               grid={"ce": {"lr_decay": [0.1, 1.0e14]}}))
    study_dir = run_study(spec, verbose=0, report=False)
    trials = {t["config"]["lr_decay"]: t for t in experiment_trials(study_dir / "grid-ce")}
    assert trials[0.1]["status"] == "TERMINATED"
    bad = trials[1.0e14]
    assert bad["status"] == "ERROR"
    assert [line["epoch"] for line in _epoch_log(bad["dir"])] == [1]  # one attempt trained; no retry did
    verdict = json.loads((bad["dir"] / VERDICT).read_text())
    assert verdict["type"] == "NonFiniteLossError" and "non-finite loss" in verdict["message"]
    error = (bad["dir"] / "error.txt").read_text()
    assert "non-finite loss in term(s)" in error and "at epoch 2" in error


# -- the disk filling while a checkpoint is written ---------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 8 MiB tmpfs (needs root and mount); unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}): the full-disk test needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class DiskFiller(threading.Thread):
    """Keeps a filesystem full (every byte freed is taken again) once ``trigger()`` is true, until stopped."""

    def __init__(self, mount: Path, trigger) -> None:
        super().__init__(daemon=True)
        self.mount, self.trigger = mount, trigger
        self.stop = threading.Event()
        self.filled = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and not self.trigger():
            time.sleep(0.05)
        n = 0
        while not self.stop.is_set():
            try:
                with open(self.mount / f"filler-{n}", "wb") as fh:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
            except OSError as err:
                assert err.errno == errno.ENOSPC
                self.filled.set()
            n += 1
            time.sleep(0.02)

    def release(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        for path in self.mount.glob("filler-*"):
            path.unlink()


def test_a_full_disk_during_a_checkpoint_write_errors_the_trial_and_resume_continues(uninterrupted, tmp_path,
                                                                                  tiny_tmpfs):
    """The workers stage each checkpoint in TMPDIR, here the tmpfs; it fills up after the first checkpoint."""
    spec_path = tmp_path / "full.yaml"
    spec_path.write_text(yaml.safe_dump(_spec_data(tmp_path, "full", max_failures=0)))
    exp_dir = tmp_path / "full" / "grid-ce"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tiny_tmpfs), "RAY_TMPDIR": "/tmp",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("RAY_ADDRESS", None)

    def first_checkpoint_done() -> bool:
        return any(_complete_epochs(d) for d in exp_dir.glob("ce_*"))

    filler = DiskFiller(tiny_tmpfs, first_checkpoint_done)
    filler.start()
    try:
        out = subprocess.run([sys.executable, "-m", "study", "run", str(spec_path), "--no-report", "--verbose", "0"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        filler.release()
    assert filler.filled.is_set(), "the trial finished before the disk filled"
    assert out.returncode in (0, 1), out.stderr[-3000:]  # 1 once a stage with errored trials counts as failed
    (trial,) = experiment_trials(exp_dir)
    assert trial["status"] == "ERROR"
    error = (trial["dir"] / "error.txt").read_text()
    assert "no space left on the device while writing the checkpoint of epoch 2" in error
    assert "the previous checkpoint is intact" in error
    assert _complete_epochs(trial["dir"]) == [1]  # the previous checkpoint, whole
    assert not list(tiny_tmpfs.rglob("*.partial"))  # no partial file left behind

    out = subprocess.run([sys.executable, "-m", "study", "resume", str(tmp_path / "full"), "--retry-errored",
                          "--no-report", "--verbose", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (trial,) = experiment_trials(exp_dir)
    assert trial["status"] == "TERMINATED"
    assert [line["epoch"] for line in _epoch_log(trial["dir"])] == [1, 2, 3]  # epoch 2 failed before its log line
    assert _final(trial["dir"]) == uninterrupted
