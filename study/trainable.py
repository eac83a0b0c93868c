"""The Ray Tune function trainable a study runs: the shared loop, with a resume that never repeats an epoch.

Why more than ``train(config, reporter, resume_from=tune.get_checkpoint())``: after a kill -9 of the
driver, Tune restores each trial from the checkpoint recorded in its last *experiment* snapshot, which
can lag behind the checkpoints the trial itself already wrote to storage. Resuming from the lagging
one would train those epochs again.
So every checkpoint here carries ``meta.json`` (its epoch and the metrics history up to it), and a
restored trial continues from the newest checkpoint found in its storage folder, first re-reporting the
epochs whose results the dead driver never logged (no epoch is trained twice, none goes missing from
``result.json``; the final epoch of a trial that finished unrecorded is reported again so Tune and its
searcher learn the final result, so that one line may appear twice, with identical metrics).

Each trial also appends one line per trained epoch to ``epoch_log.jsonl`` in its trial folder (written
by the worker itself, so it survives a driver crash): an honest record of what was trained, by which
process, when.

Study-only keys (``STUDY_KEYS``, e.g. ``pair``) stay in ``params.json`` for analysis and are removed
before the config reaches ``trainables.config.resolve_config``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STUDY_KEYS = ("pair",)
"""Keys a study adds to a trial's config for grouping; not training config."""

FIRST_METRICS = ("epoch", "val/top1", "train/loss", "lr")
META_FILE = "meta.json"
EPOCH_LOG = "epoch_log.jsonl"


def _session_trial_path() -> Path | None:
    """The trial's folder on (local or shared) storage, or None when storage is remote or unknown."""
    try:
        from ray.train._internal.session import get_session

        storage = get_session().storage
        fs = storage.storage_filesystem
        if type(fs).__name__ != "LocalFileSystem":
            return None
        return Path(storage.trial_fs_path)
    except Exception:  # noqa: BLE001 - outside a Tune session, or a Ray internals change
        return None


def _read_meta(checkpoint_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((checkpoint_dir / META_FILE).read_text())
        if (checkpoint_dir / "state.pt").is_file() and isinstance(meta.get("epoch"), int):
            return meta
    except (OSError, ValueError):
        pass
    return None


def newest_checkpoint(trial_path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The complete checkpoint with the highest epoch under a trial folder (by ``meta.json``, not by name)."""
    best: tuple[Path, dict[str, Any]] | None = None
    for child in trial_path.glob("checkpoint_*"):
        meta = _read_meta(child)
        if meta is not None and (best is None or meta["epoch"] > best[1]["epoch"]):
            best = (child, meta)
    return best


def _cpu_threads() -> None:
    """Use as many intra-op threads as CPUs this trial reserved (Ray's default leaves torch guessing)."""
    try:
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        pass


class _StudyReporter:
    """``tune.report`` once per epoch, with ``meta.json`` in each checkpoint and a worker-side epoch log."""

    def __init__(self, trial_path: Path | None, history: list[dict[str, Any]]) -> None:
        self.trial_path = trial_path
        self.history = history

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray import tune

        from trainables.reporting import json_safe

        self.history.append(json_safe(dict(metrics)))
        checkpoint = None
        if checkpoint_dir is not None:
            meta = {"epoch": int(metrics["epoch"]), "history": self.history}
            (Path(checkpoint_dir) / META_FILE).write_text(json.dumps(meta))
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir))
        if self.trial_path is not None:
            line = {"epoch": int(metrics["epoch"]), "pid": os.getpid(), "host": socket.gethostname(),
                    "time": time.time()}
            with open(self.trial_path / EPOCH_LOG, "a") as fh:
                fh.write(json.dumps(line) + "\n")
        tune.report(display_order(metrics), checkpoint=checkpoint)


def display_order(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray's trial table shows the first few metrics of a result: make them the ones a person watches."""
    first = [k for k in FIRST_METRICS if k in metrics]
    return {**{k: metrics[k] for k in first}, **{k: v for k, v in metrics.items() if k not in first}}


def logged_epoch(trial_path: Path | None) -> int:
    """The last epoch already in the trial's ``result.json`` on storage (0 if none or unreadable)."""
    if trial_path is None:
        return 0
    last = 0
    try:
        for line in (trial_path / "result.json").read_text().splitlines():
            try:
                last = max(last, int(json.loads(line).get("epoch") or 0))
            except (ValueError, TypeError, AttributeError):
                continue  # a line cut by the crash
    except OSError:
        pass
    return last


def _replay(reported_epoch: int, source: Path, meta: dict[str, Any], epochs: int, logs_restored: bool) -> None:
    """Report the epochs a checkpoint holds that the dead driver never logged, the newest with its checkpoint.

    ``logs_restored``: Tune restored this trial from a checkpoint, and with it the trial's ``result.json``
    (it appends to it); epochs already there are not reported again, except the final epoch of a finished
    trial: the restored experiment must still learn the trial's final result (its searcher may not have
    it), so that line can appear twice, with identical metrics. Without a checkpoint Tune starts the
    trial's logs afresh, so the whole history is reported again.
    """
    from ray import tune

    done = max(reported_epoch, logged_epoch(_session_trial_path())) if logs_restored else 0
    missing = [m for m in meta["history"] if int(m["epoch"]) > done]
    if not missing and int(meta["epoch"]) >= epochs:
        missing = [m for m in meta["history"] if int(m["epoch"]) == int(meta["epoch"])]
    if not missing:
        return
    for metrics in missing[:-1]:
        tune.report(display_order(metrics))
    # The newest one goes with its checkpoint, copied first: Tune may persist it under the same name.
    with tempfile.TemporaryDirectory(prefix="kd-replay-") as tmp:
        staged = Path(tmp) / "ckpt"
        shutil.copytree(source, staged)
        tune.report(display_order(missing[-1]), checkpoint=tune.Checkpoint.from_directory(str(staged)))


def run_study_trial(config: dict[str, Any]) -> None:
    """Body of every study trainable: strip study keys, pick the newest checkpoint, run the loop."""
    from ray import tune

    from trainables.config import LOOP_DEFAULTS
    from trainables.loop import train
    from trainables.trainable import trial_dir

    _cpu_threads()
    cfg = {k: v for k, v in config.items() if k not in STUDY_KEYS}
    trial_path = _session_trial_path()
    if trial_path is not None:
        trial_path.mkdir(parents=True, exist_ok=True)
    workdir = trial_dir()

    resume_dir: Path | None = None
    resume_meta: dict[str, Any] | None = None
    tune_checkpoint = tune.get_checkpoint()
    reported_epoch = 0
    if tune_checkpoint is not None:
        path = Path(tune_checkpoint.path)
        meta = _read_meta(path) if path.exists() else None
        if meta is not None:
            resume_dir, resume_meta, reported_epoch = path, meta, int(meta["epoch"])
    if trial_path is not None:
        newest = newest_checkpoint(trial_path)
        if newest is not None and (resume_meta is None or newest[1]["epoch"] > resume_meta["epoch"]):
            resume_dir, resume_meta = newest
            epochs = int(cfg.get("epochs", LOOP_DEFAULTS["epochs"]))
            _replay(reported_epoch, resume_dir, resume_meta, epochs, logs_restored=tune_checkpoint is not None)

    if resume_dir is None and tune_checkpoint is not None:
        # Remote storage (no meta scan possible): trust Tune's checkpoint.
        with tune_checkpoint.as_directory() as local:
            meta = _read_meta(Path(local))
            history = list(meta["history"]) if meta else []
            train(cfg, reporter=_StudyReporter(None, history), resume_from=local, workdir=workdir)
        return
    history = list(resume_meta["history"]) if resume_meta else []
    if resume_meta is not None and int(resume_meta["epoch"]) >= int(cfg.get("epochs", LOOP_DEFAULTS["epochs"])):
        return  # finished before the driver died; its results were re-reported above
    reporter = _StudyReporter(trial_path, history)
    train(cfg, reporter=reporter, resume_from=resume_dir, workdir=workdir)


def trainable_for(method: str) -> Callable[[dict[str, Any]], None]:
    """The study trainable for ``method``, named after it (trial names then say which method)."""
    from trainables.methods import get_method

    get_method(method)

    def trainable(config: dict[str, Any]) -> None:
        run_study_trial({**config, "method": method})

    trainable.__name__ = trainable.__qualname__ = method
    return trainable
