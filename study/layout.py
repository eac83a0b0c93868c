"""The study-dir format, in one place: where a study's files are, which of them is current, how to read them.

Everything that reads a study dir (``study status``, the resume checks of ``study.runner``/``study.tuner``,
``analysis``) reads it through here. Plain json/csv only: no Ray, no torch, no pandas, so ``analysis``
imports it without pulling either in and it works on a copied folder while the study runs.

A study dir (README "Study dir layout") holds ``spec.yaml``, ``study.json`` (the stages and what they
produced), ``optuna.db`` and one Ray Tune experiment folder per stage. In an experiment folder the trial
list and each trial's status come from the *current* ``experiment_state-*.json``; the rest from the trial
folders (``params.json``, ``result.json``, ``progress.csv``, ``error.txt``).

Which experiment state is current: the greatest file name. Tune names the file after the time its driver
session started (``experiment_state-YYYY-MM-DD_HH-MM-SS.json``), so the greatest name is the newest
session, and it is the rule Tune itself applies when it restores an experiment
(``ray.tune.execution.experiment_state._find_newest_experiment_checkpoint`` takes ``max`` of the names).
Modification times are not used: a copied or restored study dir (``cp -r``, a checkout, the
``.state-backup`` recovery) gets new mtimes that say nothing about which session wrote the file, and a
reader that disagreed with Tune would show a trial list that a resume does not use.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

# -- file names -----------------------------------------------------------------------------------------------
MANIFEST = "study.json"
SPEC_FILE = "spec.yaml"
OPTUNA_FILE = "optuna.db"
STATE_GLOB = "experiment_state-*.json"
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.csv"
ERROR_FILE = "error.txt"
EPOCH_LOG = "epoch_log.jsonl"
TRIAL_MARKS = (PARAMS_FILE, RESULT_FILE, EPOCH_LOG)
"""Files that make a folder of an experiment a trial folder (with ``checkpoint_*`` sub-folders)."""
STREAM_DIR = "teacher_stream"
"""Folder of the study dir where its trials share the teacher stream (README "Teacher source")."""
STREAM_CHUNKS = "chunk_*.pt"
"""The stream's data files (``<key>/epoch_XXXX/chunk_XXXXX.pt``; locks and temporary files are not data)."""
REPORT_OUTPUTS = ("figures", "tables")
"""Folders ``study report`` writes into a study dir (never trial folders)."""

# -- trial status (Ray Tune's names) --------------------------------------------------------------------------
TERMINATED, ERROR, RUNNING, PAUSED, PENDING = "TERMINATED", "ERROR", "RUNNING", "PAUSED", "PENDING"
TERMINAL = (TERMINATED, ERROR)

# -- metric names (one report per epoch, README "Metrics") ----------------------------------------------------
EPOCH = "epoch"
TRAIN_LOSS = "train/loss"
LOSS_TERM_PREFIX = "train/loss_"
TRAIN_TOP1 = "train/top1"
VAL_TOP1 = "val/top1"
VAL_TOP5 = "val/top5"
TEST_TOP1 = "test/top1"
TEST_TOP5 = "test/top5"
TEACHER_CALLS = "teacher_calls"
TEACHER_CALLS_COMPUTED = "teacher_calls_computed"
"""Teacher passes a trial ran itself; ``teacher_calls`` counts those its method asked for (served or run)."""
BOUND_TERMS = ("bound/teacher_err", "bound/student_err", "bound/delta1", "bound/delta2", "bound/rhs")
SC_TERMS = ("sc/labels", "sc/random_labels", "sc/offline_teacher", "sc/online_teacher")
SC_INIT_PREFIX = "sc_init/"
"""``sc_init/<target>``: the measurement at initialisation, reported with the first epoch (curves: epoch 0)."""
SC_TEMPERATURE_PREFIX = "sc/teacher_T"
"""``sc/teacher_T<T>``: the final teacher's softmax(z / T) for T in 1, 2, 4, 8."""
SC_TRAJECTORY_PREFIX = "sc/trajectory/"
"""``sc/trajectory/<teacher epoch>``: each trajectory checkpoint's targets (``online`` trials)."""

RAY_BOOKKEEPING = frozenset({
    "config", "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "trial_id", "date", "pid",
    "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "experiment_tag",
    "time_this_iter_s", "timesteps_total", "episodes_total", "timesteps_since_restore",
})
"""Keys Ray adds to every reported row that are not metrics of the trial."""

# -- configuration keys ---------------------------------------------------------------------------------------
NON_CONFIG_KEYS = frozenset({
    "seed", "teacher_checkpoint", "trajectory_dir", "device", "amp", "channels_last", "compile",
    "gpu_memory_fraction", "eval_batch_size", "eval_test_every", "checkpoint_every", "data_root",
})
"""Config keys that do not define a configuration: seeds are repetitions of one configuration, the rest are
paths and execution settings that do not change what is learned (a teacher checkpoint per seed, AMP...)."""

IDENTITY_KEYS = frozenset({"method", "teacher", "student", "pair", "dataset", "teacher_trajectory"})
"""Config keys that say which cell a trial belongs to (method, pair, data set), not how it was tuned."""


# -- the pair label -------------------------------------------------------------------------------------------
def pair_label(teacher: Any, student: Any) -> str:
    """The ``pair`` value trials carry and stage names use: ``<teacher>-<student>``."""
    return f"{teacher}-{student}"


def pair_display(teacher: Any, student: Any) -> str:
    """How tables and figures show a pair: ``teacher → student`` (the student alone when there is no teacher)."""
    if teacher is None or (isinstance(teacher, float) and math.isnan(teacher)):
        return str(student)
    return f"{teacher} → {student}"


# -- the teacher stream ---------------------------------------------------------------------------------------
def stream_size(study_dir: str | Path) -> tuple[int, int]:
    """(bytes, epochs) the study's teacher stream holds; (0, 0) without one. Read while trials write it."""
    root = Path(study_dir) / STREAM_DIR
    total, epochs = 0, set()
    for f in root.glob(f"*/epoch_*/{STREAM_CHUNKS}"):
        try:
            total += f.stat().st_size
        except OSError:  # evicted meanwhile
            continue
        epochs.add(f.parent)
    return total, len(epochs)


# -- the manifest ---------------------------------------------------------------------------------------------
def load_manifest(study_dir: str | Path) -> dict[str, Any]:
    """``study.json``; a ``FileNotFoundError`` when the folder is not a study dir."""
    path = Path(study_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{study_dir} is not a study dir (no {MANIFEST})")
    return json.loads(path.read_text())


def save_manifest(study_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Atomic write: a crash never leaves half a manifest."""
    path = Path(study_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(path)


def stage_kinds(study_dir: str | Path, problems: list[str] | None = None) -> dict[str, str]:
    """Stage (experiment folder) name -> kind, from ``study.json``; empty when there is none or it is unreadable."""
    path = Path(study_dir) / MANIFEST
    if not path.is_file():
        return {}
    data = _read_json(path, problems)
    stages = data.get("stages", []) if isinstance(data, dict) else []
    return {str(s["name"]): str(s["kind"]) for s in stages if isinstance(s, dict) and "name" in s and "kind" in s}


def reused_trials(study_dir: str | Path, problems: list[str] | None = None) -> dict[tuple[str, str], str]:
    """(stage, trial folder) of each search trial a final stage reuses as its ``seeds[0]`` run -> that final stage.

    A final stage does not train the search's best configuration on ``seeds[0]`` again (same config, same seed:
    the same run); ``study.json`` names the reused trial in the final stage's ``reused`` entry.
    """
    path = Path(study_dir) / MANIFEST
    if not path.is_file():
        return {}
    data = _read_json(path, problems)
    stages = data.get("stages", []) if isinstance(data, dict) else []
    out = {}
    for s in stages:
        reused = s.get("reused") if isinstance(s, dict) else None
        if isinstance(reused, dict) and reused.get("stage") and reused.get("trial"):
            out[(str(reused["stage"]), str(reused["trial"]))] = str(s["name"])
    return out


# -- experiment state -----------------------------------------------------------------------------------------
class Trial(TypedDict):
    """A trial as its experiment knows it. ``status`` is Ray's (None for a folder the state does not list)."""

    trial_id: str | None
    status: str | None
    dir: Path
    config: dict[str, Any]
    trainable: str | None
    last_result: dict[str, Any]
    metric_analysis: dict[str, Any]
    error_file: str | None
    listed: bool


def current_state_file(exp_dir: str | Path) -> Path | None:
    """The experiment state Tune restores from: the greatest ``experiment_state-*.json`` name (see module doc)."""
    files = sorted(Path(exp_dir).glob(STATE_GLOB), key=lambda p: p.name)
    return files[-1] if files else None


def _decode(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def experiment_trials(exp_dir: str | Path, problems: list[str] | None = None) -> list[Trial]:
    """The trials the current experiment state lists, in its order (empty when there is none or it is unreadable)."""
    exp_dir = Path(exp_dir)
    state_file = current_state_file(exp_dir)
    if state_file is None:
        return []
    data = _read_json(state_file, problems)
    if not isinstance(data, dict):
        return []
    out: list[Trial] = []
    for entry in data.get("trial_data", []):
        try:
            parts = entry if isinstance(entry, list) else [entry]
            trial = _decode(parts[0])
            runtime = _decode(parts[1]) if len(parts) > 1 else {}
        except (TypeError, ValueError, IndexError) as exc:
            _note(problems, f"unreadable trial entry in {state_file}: {exc}")
            continue
        if not isinstance(trial, dict):
            continue
        runtime = runtime if isinstance(runtime, dict) else {}
        config = trial.get("config")
        logdir = trial.get("relative_logdir") or trial.get("trial_id")
        out.append(Trial(
            trial_id=trial.get("trial_id"), status=trial.get("status"), dir=exp_dir / str(logdir),
            config=config if isinstance(config, dict) else {}, trainable=trial.get("trainable_name"),
            last_result=runtime.get("last_result") or {}, metric_analysis=runtime.get("metric_analysis") or {},
            error_file=runtime.get("error_filename"), listed=True,
        ))
    return out


def is_trial_dir(path: Path) -> bool:
    """A visible folder with a trial's files (hidden ones are ``.state-backup``, ``.orphan-*``, abandoned runs)."""
    if not path.is_dir() or path.name.startswith("."):
        return False
    return any((path / m).exists() for m in TRIAL_MARKS) or any(path.glob("checkpoint_*"))


def orphan_dirs(exp_dir: str | Path, trials: Iterable[Trial] | None = None) -> list[Path]:
    """Trial folders of ``exp_dir`` that its current state does not list (a driver killed before recording them)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    known = {t["dir"].name for t in (experiment_trials(exp_dir) if trials is None else trials)}
    return sorted(p for p in exp_dir.iterdir() if p.name not in known and is_trial_dir(p))


def list_trials(exp_dir: str | Path, problems: list[str] | None = None) -> list[Trial]:
    """The listed trials, then one entry (``listed`` False, ``status`` None) per orphan folder."""
    listed = experiment_trials(exp_dir, problems)
    orphans = [Trial(trial_id=None, status=None, dir=p, config={}, trainable=None, last_result={},
                     metric_analysis={}, error_file=None, listed=False) for p in orphan_dirs(exp_dir, listed)]
    return listed + orphans


def all_finished(exp_dir: str | Path) -> bool:
    """The experiment lists trials and every one of them terminated or errored."""
    trials = experiment_trials(exp_dir)
    return bool(trials) and all(t["status"] in TERMINAL for t in trials)


def experiment_dirs(root: str | Path) -> list[Path]:
    """Folders holding an experiment state (the study dir itself included, two levels down), hidden ones not."""
    root = Path(root)
    found = {p.parent for pattern in (STATE_GLOB, f"*/{STATE_GLOB}", f"*/*/{STATE_GLOB}") for p in root.glob(pattern)}
    return sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(root).parts))


def trial_dirs(root: str | Path) -> list[Path]:
    """Every folder under ``root`` holding a ``params.json``, not descending into trial, hidden or report folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if PARAMS_FILE in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("checkpoint_", ".")) and d not in REPORT_OUTPUTS)
    return sorted(found)


def study_trials(root: str | Path, problems: list[str] | None = None) -> Iterator[Trial]:
    """Every trial of a study dir: each trial folder (with its listing, when its experiment lists it), then the
    trials an experiment lists that have no folder yet (pending). Orphans come with ``listed`` False."""
    root = Path(root)
    listed = {e: {t["dir"].name: t for t in experiment_trials(e, problems)} for e in experiment_dirs(root)}
    seen: set[Path] = set()
    for folder in trial_dirs(root):
        seen.add(folder)
        known = listed.get(folder.parent, {}).get(folder.name)
        yield known if known is not None else Trial(trial_id=None, status=None, dir=folder, config={}, trainable=None,
                                                   last_result={}, metric_analysis={}, error_file=None, listed=False)
    for trials in listed.values():
        for trial in trials.values():
            if trial["dir"] not in seen:
                yield trial


# -- trial folders --------------------------------------------------------------------------------------------
def read_params(trial_dir: str | Path, fallback: Mapping[str, Any] | None = None,
                problems: list[str] | None = None) -> dict[str, Any]:
    """The trial's flat config from ``params.json``; ``fallback`` (the state's config) when missing or unreadable."""
    path = Path(trial_dir) / PARAMS_FILE
    if path.is_file():
        data = _read_json(path, problems)
        if isinstance(data, dict):
            return data
    return dict(fallback or {})


def read_results(trial_dir: str | Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows a trial reported, one per epoch in epoch order, from ``result.json`` (else ``progress.csv``).

    A half-written last line (the one being written while the trial runs) is skipped silently; any other line
    that does not parse is skipped and noted in ``problems``. An epoch reported twice (a resumed trial
    re-reports its final epoch) keeps the later line.
    """
    trial_dir = Path(trial_dir)
    rows = _result_lines(trial_dir / RESULT_FILE, problems)
    if not rows:
        rows = _progress_rows(trial_dir / PROGRESS_FILE, problems)
    by_epoch: dict[Any, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        by_epoch[row.get(EPOCH, row.get("training_iteration", i + 1))] = row
    return [by_epoch[k] for k in sorted(by_epoch, key=_epoch_order)]


def _epoch_order(epoch: Any) -> tuple[int, float, str]:
    try:
        return (0, float(epoch), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(epoch))


def _result_lines(path: Path, problems: list[str] | None) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        _note(problems, f"could not read {path}: {exc}")
        return []
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i < len(lines) - 1:  # only the line being written may be incomplete
                _note(problems, f"skipped a malformed line {i + 1} in {path}")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _progress_rows(path: Path, problems: list[str] | None) -> list[dict[str, Any]]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    try:
        with path.open(newline="") as fh:
            return [{k: _csv_value(v) for k, v in row.items() if k} for row in csv.DictReader(fh)]
    except (OSError, csv.Error) as exc:
        _note(problems, f"could not read {path}: {exc}")
        return []


def _csv_value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_message(text: str) -> str:
    """The line of a Ray ``error.txt`` that says what went wrong (the exception line, without the traceback)."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    candidates = [line for line in lines if line and not line[0].isspace() and not line.startswith(
        ("Traceback", "Failure #", "The above exception", "During handling", "ray::"))]
    for line in reversed(candidates):
        if re.match(r"^[\w.]+(Error|Exception|Exceeded|Interrupt|Exit)\b.*", line) or ": " in line:
            return line
    return candidates[-1] if candidates else (lines[-1] if lines else "")


def read_error(trial_dir: str | Path) -> str | None:
    """The exception line of the trial's ``error.txt``; None when there is no such file."""
    path = Path(trial_dir) / ERROR_FILE
    if not path.is_file():
        return None
    try:
        return error_message(path.read_text(errors="replace"))
    except OSError as exc:
        return f"(error.txt unreadable: {exc})"


# -- helpers --------------------------------------------------------------------------------------------------
def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _note(problems: list[str] | None, line: str) -> None:
    if problems is not None:
        problems.append(line)


def _read_json(path: Path, problems: list[str] | None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        _note(problems, f"could not read {path}: {exc}")
        return None
