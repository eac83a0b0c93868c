"""Read a study dir from disk into pandas frames, without Ray.

A study dir is Ray Tune's experiment folder (one or several, e.g. one Tuner per method) plus ``spec.yaml``
and ``optuna.db``. Every trial folder holds ``params.json`` (its flat config), ``result.json`` (one JSON line
per epoch report), ``progress.csv`` and, when it failed, ``error.txt``; ``experiment_state-*.json`` says
which trials are pending, running, terminated or errored. Any of these may be missing or half written while a
study runs, so every reader here tolerates that and records what it could not read instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import paper

STATES = ("terminated", "running", "paused", "pending", "errored")
"""Trial states in the order the report lists them (Ray's TERMINATED/RUNNING/PAUSED/PENDING/ERROR)."""

_RAY_STATES = {"TERMINATED": "terminated", "RUNNING": "running", "PAUSED": "paused", "PENDING": "pending",
               "ERROR": "errored"}

RAY_BOOKKEEPING = frozenset({
    "config", "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "trial_id", "date", "pid",
    "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "experiment_tag",
    "time_this_iter_s", "timesteps_total", "episodes_total", "timesteps_since_restore",
})
"""Keys Ray adds to every reported row that are not metrics of the trial."""

NON_CONFIG_KEYS = frozenset({
    "seed", "teacher_checkpoint", "trajectory_dir", "device", "amp", "channels_last", "compile",
    "gpu_memory_fraction", "eval_batch_size", "eval_test_every", "checkpoint_every", "data_root",
})
"""Config keys that do not define a configuration: seeds are repetitions of one configuration, the rest are
paths and execution settings that do not change what is learned (a teacher checkpoint per seed, AMP...)."""

IDENTITY_KEYS = frozenset({"method", "teacher", "student", "pair", "dataset", "teacher_trajectory"})
"""Config keys that say which cell a trial belongs to (method, pair, data set), not how it was tuned."""

_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})_\d+_")


@dataclass
class Study:
    """Everything ``analysis`` knows about one study dir.

    ``trials``: one row per trial (identity, ``state``, ``completed``, ``error``, resolved ``method``/
    ``teacher``/``student``/``seed``/``dataset``, every param as ``config/<key>``, and the last reported value of
    every metric under its own name). ``history``: one row per trial and epoch (``trial_id``, ``epoch`` and the
    metric columns). ``problems``: files that could not be read, as readable lines.
    """

    root: Path
    trials: pd.DataFrame
    history: pd.DataFrame
    spec: dict[str, Any] | None = None
    spec_text: str | None = None
    optuna_dbs: list[Path] = field(default_factory=list)
    experiments: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.spec and isinstance(self.spec.get("name"), str):
            return self.spec["name"]
        return self.root.name

    def config_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("config/")]

    def metric_columns(self) -> list[str]:
        return [c for c in self.history.columns if c not in ("trial_id", "epoch")]

    def knobs(self) -> list[str]:
        """Config keys (without prefix) whose value differs between trials: seeds, paths, method and pair excluded."""
        out = []
        for col in self.config_columns():
            key = col[len("config/"):]
            if key in NON_CONFIG_KEYS or key in IDENTITY_KEYS:
                continue
            if self.trials[col].map(_hashable).nunique(dropna=False) > 1:
                out.append(key)
        return out

    def history_long(self) -> pd.DataFrame:
        """The history as (trial_id, epoch, metric, value) rows, NaNs dropped: handy for plotting any metric."""
        if self.history.empty:
            return pd.DataFrame(columns=["trial_id", "epoch", "metric", "value"])
        long = self.history.melt(id_vars=["trial_id", "epoch"], var_name="metric", value_name="value")
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        return long.dropna(subset=["value"]).reset_index(drop=True)

    def with_params(self, frame: pd.DataFrame, columns: Iterable[str] = ()) -> pd.DataFrame:
        """Join identity columns (method, pair, seed, state...) and the given trial columns onto ``frame``."""
        keep = ["trial_id", "method", "teacher", "student", "pair", "seed", "state", "completed", *columns]
        keep = list(dict.fromkeys(c for c in keep if c in self.trials.columns))
        return frame.merge(self.trials[keep], on="trial_id", how="left")


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become ``a/b`` keys (Ray's convention); lists become tuples so they can be grouped."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{name}/"))
        else:
            out[name] = _hashable(value)
    return out


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"could not read {path}: {exc}")
        return None


def read_results(trial_dir: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows a trial reported, from ``result.json`` (a half-written last line is skipped), else progress.csv."""
    problems = problems if problems is not None else []
    rows: list[dict[str, Any]] = []
    result = trial_dir / "result.json"
    if result.is_file():
        try:
            text = result.read_text()
        except OSError as exc:
            problems.append(f"could not read {result}: {exc}")
            text = ""
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:  # only the line being written may be incomplete
                    problems.append(f"skipped a malformed line {i + 1} in {result}")
        if rows:
            return rows
    progress = trial_dir / "progress.csv"
    if progress.is_file() and progress.stat().st_size > 0:
        try:
            return pd.read_csv(progress).to_dict("records")
        except (OSError, ValueError) as exc:
            problems.append(f"could not read {progress}: {exc}")
    return rows


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


def _experiment_states(exp_dir: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Per trial dir name: Ray's view of the trial from the newest ``experiment_state-*.json`` in ``exp_dir``."""
    files = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        return {}
    data = _read_json(files[-1], problems)
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(data, dict):
        return out
    for entry in data.get("trial_data", []):
        try:
            trial_json, runtime_json = entry
            trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            runtime = json.loads(runtime_json) if isinstance(runtime_json, str) else runtime_json
        except (TypeError, ValueError) as exc:
            problems.append(f"unreadable trial entry in {files[-1]}: {exc}")
            continue
        logdir = trial.get("relative_logdir") or trial.get("trial_id")
        out[str(logdir)] = {
            "trial_id": trial.get("trial_id"),
            "status": trial.get("status"),
            "trainable": trial.get("trainable_name"),
            "config": trial.get("config") or {},
            "error_file": (runtime or {}).get("error_filename"),
            "last_result": (runtime or {}).get("last_result") or {},
        }
    return out


def find_trial_dirs(root: Path) -> list[Path]:
    """Folders holding a ``params.json`` (trial folders), not descending into checkpoints or trial folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "params.json" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("checkpoint_", ".")) and d not in
                             ("figures", "tables"))
    return sorted(found)


def find_experiment_dirs(root: Path) -> list[Path]:
    """Folders holding an ``experiment_state-*.json`` (Ray experiments), the study dir itself included."""
    found = {p.parent for p in root.glob("experiment_state-*.json")}
    found |= {p.parent for p in root.glob("*/experiment_state-*.json")}
    found |= {p.parent for p in root.glob("*/*/experiment_state-*.json")}
    # Hidden folders (the study's ``.state-backup/`` copies of the state files) are not experiments.
    return sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(root).parts))


def _state(ray_status: str | None, has_error: bool, rows: list[dict[str, Any]]) -> str:
    if ray_status in _RAY_STATES:
        return _RAY_STATES[ray_status]  # an error.txt beside a later state is a failure that was retried
    if has_error:
        return "errored"
    if rows and rows[-1].get("done"):
        return "terminated"
    return "running" if rows else "pending"


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key in RAY_BOOKKEEPING or isinstance(value, dict | list):
            continue
        out[key] = value
    return out


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _trial_record(
    trial_dir: Path | None, name: str, exp_dir: Path, root: Path, ray: dict[str, Any], problems: list[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    params: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    error = None
    if trial_dir is not None:
        loaded = _read_json(trial_dir / "params.json", problems) if (trial_dir / "params.json").is_file() else None
        params = loaded if isinstance(loaded, dict) else {}
        rows = read_results(trial_dir, problems)
        err_file = trial_dir / "error.txt"
        if err_file.is_file():
            try:
                error = error_message(err_file.read_text(errors="replace"))
            except OSError as exc:
                error = f"(error.txt unreadable: {exc})"
    if not params:
        params = dict(ray.get("config") or {})
    trial_id = ray.get("trial_id") or next((r.get("trial_id") for r in rows if r.get("trial_id")), None)
    if not trial_id:
        match = _TRIAL_ID.search(name)
        trial_id = match.group(1) if match else name
    method = params.get("method") or (ray.get("config") or {}).get("method") or ray.get("trainable")
    if not method:
        method = _TRIAL_ID.split(name)[0] if _TRIAL_ID.search(name) else None
    state = _state(ray.get("status"), error is not None, rows)
    if state == "errored" and error is None:
        error = "errored (no error.txt found)"
    last = _metrics(rows[-1]) if rows else {}
    if not rows and ray.get("last_result"):
        last = _metrics(ray["last_result"])
    epochs_cfg = params.get("epochs")
    last_epoch = _float_or_nan(last.get("epoch", last.get("training_iteration")))
    if isinstance(epochs_cfg, int | float) and not isinstance(epochs_cfg, bool):
        completed = state not in ("errored", "pending") and last_epoch >= float(epochs_cfg)
    else:
        completed = state == "terminated" and "test/top1" in last
    teacher, student = params.get("teacher"), params.get("student")
    if method == "teacher":
        student = None
    record = {
        "trial_id": str(trial_id),
        "trial_name": name,
        "experiment": str(exp_dir.relative_to(root)) if exp_dir != root else ".",
        "trial_dir": str(trial_dir) if trial_dir is not None else None,
        "stage_kind": None,
        "state": state,
        "completed": bool(completed),
        "error": error,
        "last_epoch": last_epoch,
        "n_reports": len(rows),
        "method": method,
        "dataset": params.get("dataset"),
        "teacher": teacher,
        "student": student,
        "pair": f"{teacher} → {student}" if teacher and student else None,
        "seed": params.get("seed"),
    }
    record.update({f"config/{k}": v for k, v in flatten(params).items()})
    record.update(last)
    return record, rows


def load_study(study_dir: str | Path) -> Study:
    """Read the study dir at ``study_dir`` (a finished, running or partly failed study) into a ``Study``."""
    root = Path(study_dir).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"study dir not found: {root} (give the folder `study run` created)")
    problems: list[str] = []
    experiments = find_experiment_dirs(root)
    states: dict[Path, dict[str, dict[str, Any]]] = {e: _experiment_states(e, problems) for e in experiments}
    records: list[dict[str, Any]] = []
    history_rows: list[dict[str, Any]] = []
    seen: set[tuple[Path, str]] = set()
    for trial_dir in find_trial_dirs(root):
        exp_dir = trial_dir.parent
        ray = states.get(exp_dir, {}).get(trial_dir.name, {})
        record, rows = _trial_record(trial_dir, trial_dir.name, exp_dir, root, ray, problems)
        seen.add((exp_dir, trial_dir.name))
        records.append(record)
        history_rows.extend(_history(record["trial_id"], rows))
    for exp_dir, trials in states.items():  # trials Ray knows of that have no folder yet (pending)
        for name, ray in trials.items():
            if (exp_dir, name) not in seen:
                record, _ = _trial_record(None, name, exp_dir, root, ray, problems)
                records.append(record)
    trials = pd.DataFrame.from_records(records)
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "trial_name", "experiment", "trial_dir", "state", "completed",
                                       "error", "last_epoch", "n_reports", "method", "dataset", "teacher",
                                       "student", "pair", "seed"])
    history = pd.DataFrame.from_records(history_rows)
    if history.empty:
        history = pd.DataFrame(columns=["trial_id", "epoch"])
    else:
        history = (history.drop_duplicates(subset=["trial_id", "epoch"], keep="last")
                   .sort_values(["trial_id", "epoch"]).reset_index(drop=True))
    if not trials.empty:
        kinds = _stage_kinds(root, problems)
        trials["stage_kind"] = [kinds.get(e) or _stage_kind_from_name(e) for e in trials["experiment"]]
    trials = paper.with_method_info(trials, root)
    spec, spec_text = _read_spec(root, problems)
    dbs = sorted({*root.glob("optuna.db"), *root.glob("*/optuna.db")})
    return Study(root=root, trials=trials, history=history, spec=spec, spec_text=spec_text, optuna_dbs=dbs,
                 experiments=experiments, problems=problems)


def _history(trial_id: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        metrics = _metrics(row)
        epoch = metrics.pop("epoch", metrics.get("training_iteration", i + 1))
        out.append({"trial_id": trial_id, "epoch": epoch, **metrics})
    return out


STAGE_KINDS = ("teachers", "search", "final", "grid")
"""Kinds of experiment a ``study run`` writes (``study.json`` lists them): the teacher stage, an Optuna search,
the selected configuration re-run over seeds, and a grid."""


def _stage_kinds(root: Path, problems: list[str]) -> dict[str, str]:
    """Experiment folder name -> stage kind, from the study's ``study.json`` manifest when there is one."""
    path = root / "study.json"
    if not path.is_file():
        return {}
    data = _read_json(path, problems)
    stages = data.get("stages", []) if isinstance(data, dict) else []
    return {str(s["name"]): str(s["kind"]) for s in stages if isinstance(s, dict) and "name" in s and "kind" in s}


def _stage_kind_from_name(experiment: str) -> str | None:
    head = Path(experiment).name.split("-", 1)[0]
    return head if head in STAGE_KINDS else None


def _read_spec(root: Path, problems: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    path = root / "spec.yaml"
    if not path.is_file():
        return None, None
    import yaml

    try:
        text = path.read_text()
        spec = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"could not read {path}: {exc}")
        return None, None
    return (spec if isinstance(spec, dict) else None), text
