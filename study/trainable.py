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

A checkpoint cut by a crash or a full disk is never resumed from: the newest *complete* one is, with a
warning naming the skipped file (on the worker's stderr and in the trial's ``warnings.txt``). A
deterministic failure (``trainables.errors.DeterministicError``: a non-finite loss, a refused
checkpoint) is not retried: Ray Tune would retry it ``max_failures`` times, so the failing attempt records
it and any retry by the same driver re-raises it before building anything; crashes of the process itself
(a killed worker, a lost node) are retried from the newest complete checkpoint as before.

Study-only keys (``STUDY_KEYS``, e.g. ``pair``) stay in ``params.json`` for analysis and are removed
before the config reaches ``trainables.config.resolve_config``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .ray_compat import trial_storage_path

DRIVER_RUN_ID = uuid.uuid4().hex
"""Names this driver process (see ``raise_recorded_terminal``); a resumed study is a new process, a new id."""

STUDY_KEYS = ("pair",)
"""Keys a study adds to a trial's config for grouping; not training config."""

FIRST_METRICS = ("epoch", "val/top1", "train/loss", "lr")
META_FILE = "meta.json"
EPOCH_LOG = "epoch_log.jsonl"
WARNINGS = "warnings.txt"
"""Warnings about the trial's own files (a damaged checkpoint skipped on resume), one line each."""
VERDICT = "terminal_error.json"
"""Written when a trial fails deterministically: Tune's retries of it (same driver) re-raise it at once."""


def _read_meta(checkpoint_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((checkpoint_dir / META_FILE).read_text())
        if (checkpoint_dir / "state.pt").is_file() and isinstance(meta.get("epoch"), int):
            return meta
    except (OSError, ValueError):
        pass
    return None


def _damage(checkpoint_dir: Path) -> str | None:
    """Why a checkpoint folder is not complete (its ``meta.json`` or ``state.pt`` cut or missing), or None."""
    from trainables.checkpoint import damage

    if _read_meta(checkpoint_dir) is None:
        return f"{checkpoint_dir / META_FILE} is missing or unreadable"
    problem = damage(checkpoint_dir)
    return f"{checkpoint_dir / 'state.pt'} is {problem}" if problem else None


def warn_in_trial(trial_path: Path | None, message: str) -> None:
    """A warning a person must see: on the worker's stderr (Ray shows it on the driver) and in ``WARNINGS``."""
    print(f"kdstudy warning: {message}", file=sys.stderr, flush=True)
    if trial_path is not None:
        with open(trial_path / WARNINGS, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def newest_checkpoint(trial_path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The complete checkpoint with the highest epoch under a trial folder (by ``meta.json``, not by name).

    Newer checkpoints cut by a crash or a full disk are passed over, each with a warning naming its file
    (one whose ``meta.json`` is unreadable counts as newest: a cut write is usually the last one).
    """
    candidates = []
    for child in trial_path.glob("checkpoint_*"):
        if child.is_dir():
            meta = _read_meta(child)
            candidates.append((meta["epoch"] if meta else math.inf, child.name, child, meta))
    for _, _, child, meta in sorted(candidates, key=lambda c: c[:2], reverse=True):
        problem = _damage(child)
        if problem is None:
            return child, meta
        warn_in_trial(trial_path, f"{problem}; resuming from an older complete checkpoint")
    return None


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

    done = max(reported_epoch, logged_epoch(trial_storage_path())) if logs_restored else 0
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


def record_terminal(trial_path: Path | None, run_id: str, err: Exception) -> None:
    """Remember a deterministic failure so that Tune's retries of this trial by this driver end at once."""
    if trial_path is not None and run_id:
        verdict = {"run": run_id, "type": type(err).__name__, "message": str(err)}
        (trial_path / VERDICT).write_text(json.dumps(verdict))


def raise_recorded_terminal(trial_path: Path | None, run_id: str) -> None:
    """Re-raise the failure an earlier attempt recorded under the same driver, before building anything.

    Ray Tune retries every failed trial up to ``max_failures`` whatever the exception (``Trial.should_recover``
    counts failures only), and a deterministic failure would only repeat. A new driver (``study resume
    --retry-errored``) has another ``run_id``: it trains the trial again, as asked.
    """
    from trainables import errors

    if trial_path is None or not run_id or not (trial_path / VERDICT).is_file():
        return
    try:
        verdict = json.loads((trial_path / VERDICT).read_text())
    except (OSError, ValueError):
        return
    if verdict.get("run") != run_id:
        return
    cls = getattr(errors, str(verdict.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.DeterministicError)):
        cls = errors.DeterministicError
    raise cls(f"{verdict.get('message')} (not retried: a retry from the same checkpoint repeats it)")


def run_study_trial(config: dict[str, Any], run_id: str = "") -> None:
    """Body of every study trainable: strip study keys, pick the newest complete checkpoint, run the loop.

    ``run_id`` names the driver that built the trainable (see ``raise_recorded_terminal``).
    """
    from ray import tune

    from trainables.config import LOOP_DEFAULTS
    from trainables.errors import DeterministicError
    from trainables.loop import train
    from trainables.trainable import trial_dir

    trial_path = trial_storage_path()
    if trial_path is not None:
        trial_path.mkdir(parents=True, exist_ok=True)
        raise_recorded_terminal(trial_path, run_id)
    _cpu_threads()
    cfg = {k: v for k, v in config.items() if k not in STUDY_KEYS}
    workdir = trial_dir()

    resume_dir: Path | None = None
    resume_meta: dict[str, Any] | None = None
    tune_checkpoint = tune.get_checkpoint()
    reported_epoch = 0
    if tune_checkpoint is not None:
        path = Path(tune_checkpoint.path)
        meta = _read_meta(path) if path.exists() else None
        if meta is not None:
            reported_epoch = int(meta["epoch"])
            if _damage(path) is None:  # a cut one is named by the scan below, which takes an older one
                resume_dir, resume_meta = path, meta
    if trial_path is not None:
        newest = newest_checkpoint(trial_path)
        if newest is not None and (resume_meta is None or newest[1]["epoch"] > resume_meta["epoch"]):
            resume_dir, resume_meta = newest
            epochs = int(cfg.get("epochs", LOOP_DEFAULTS["epochs"]))
            _replay(reported_epoch, resume_dir, resume_meta, epochs, logs_restored=tune_checkpoint is not None)

    try:
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
        train(cfg, reporter=_StudyReporter(trial_path, history), resume_from=resume_dir, workdir=workdir)
    except DeterministicError as err:
        record_terminal(trial_path, run_id, err)
        raise


def trainable_for(method: str) -> Callable[[dict[str, Any]], None]:
    """The study trainable for ``method``, named after it (trial names then say which method).

    The ``run_id`` (travelling with the function to the workers) is one per driver process: stages of one
    method fitted at the same time register the same trainable name with Tune, so whichever registration a
    worker fetches must say the same.
    """
    from trainables.methods import get_method

    get_method(method)
    run_id = DRIVER_RUN_ID

    def trainable(config: dict[str, Any]) -> None:
        run_study_trial({**config, "method": method}, run_id)

    trainable.__name__ = trainable.__qualname__ = method
    return trainable
