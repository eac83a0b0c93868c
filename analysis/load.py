"""Read a study dir from disk into pandas frames, without Ray or torch.

The study-dir format (which experiment state is current, which folders are trials, how ``params.json``,
``result.json``/``progress.csv`` and ``error.txt`` are read) belongs to ``study.layout``; this module turns
what it reads into a ``Study``: a trial frame, a history frame and the problems met on the way. Any file may
be missing or half written while a study runs, so nothing here fails on one: it records what it could not
read instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study import layout
from study.layout import IDENTITY_KEYS, NON_CONFIG_KEYS, RAY_BOOKKEEPING

from . import paper

STATES = ("terminated", "running", "paused", "pending", "errored")
"""Trial states in the order the report lists them (Ray's TERMINATED/RUNNING/PAUSED/PENDING/ERROR)."""

_RAY_STATES = {layout.TERMINATED: "terminated", layout.RUNNING: "running", layout.PAUSED: "paused",
               layout.PENDING: "pending", layout.ERROR: "errored"}

__all__ = ["IDENTITY_KEYS", "NON_CONFIG_KEYS", "STATES", "Study", "flatten", "load_study"]

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


def _trial_record(trial: layout.Trial, root: Path, problems: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    trial_dir, exp_dir, name = trial["dir"], trial["dir"].parent, trial["dir"].name
    present = trial_dir.is_dir()
    params = layout.read_params(trial_dir, trial["config"], problems) if present else dict(trial["config"])
    rows = layout.read_results(trial_dir, problems) if present else []
    error = layout.read_error(trial_dir) if present else None
    trial_id = trial["trial_id"] or next((r.get("trial_id") for r in rows if r.get("trial_id")), None)
    if not trial_id:
        match = _TRIAL_ID.search(name)
        trial_id = match.group(1) if match else name
    method = params.get("method") or trial["config"].get("method") or trial["trainable"]
    if not method:
        method = _TRIAL_ID.split(name)[0] if _TRIAL_ID.search(name) else None
    state = _state(trial["status"], error is not None, rows)
    if state == "errored" and error is None:
        error = "errored (no error.txt found)"
    last = _metrics(rows[-1]) if rows else {}
    if not rows and trial["last_result"]:
        last = _metrics(trial["last_result"])
    epochs_cfg = params.get("epochs")
    last_epoch = _float_or_nan(last.get(layout.EPOCH, last.get("training_iteration")))
    if isinstance(epochs_cfg, int | float) and not isinstance(epochs_cfg, bool):
        completed = state not in ("errored", "pending") and last_epoch >= float(epochs_cfg)
    else:
        completed = state == "terminated" and layout.TEST_TOP1 in last
    teacher, student = params.get("teacher"), params.get("student")
    if method == "teacher":
        student = None
    record = {
        "trial_id": str(trial_id),
        "trial_name": name,
        "experiment": str(exp_dir.relative_to(root)) if exp_dir != root else ".",
        "trial_dir": str(trial_dir) if present else None,
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
        "pair": layout.pair_label(teacher, student) if teacher and student else None,
        "seed": params.get("seed"),
    }
    record.update({f"config/{k}": v for k, v in flatten(params).items()})
    record.update(last)
    return record, rows


_TRIAL_COLUMNS = ["trial_id", "trial_name", "experiment", "trial_dir", "stage_kind", "state", "completed", "error",
                  "last_epoch", "n_reports", "method", "dataset", "teacher", "student", "pair", "seed"]


def load_study(study_dir: str | Path) -> Study:
    """Read the study dir at ``study_dir`` (a finished, running or partly failed study) into a ``Study``."""
    root = Path(study_dir).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"study dir not found: {root} (give the folder `study run` created)")
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    history_parts: list[pd.DataFrame] = []
    for trial in layout.study_trials(root, problems):
        record, rows = _trial_record(trial, root, problems)
        records.append(record)
        if rows:
            history_parts.append(_history(record["trial_id"], rows))
    trials = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=_TRIAL_COLUMNS)
    if history_parts:
        history = (pd.concat(history_parts, ignore_index=True, sort=False)
                   .sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True))
    else:
        history = pd.DataFrame(columns=["trial_id", "epoch"])
    if not trials.empty:
        kinds = layout.stage_kinds(root, problems)
        trials["stage_kind"] = [kinds.get(e) or _stage_kind_from_name(e) for e in trials["experiment"]]
        reused = layout.reused_trials(root, problems)  # a final stage's seeds[0] run is its search's trial
        trials["final_reuse"] = [(e, n) in reused for e, n in zip(trials["experiment"], trials["trial_name"])]
    trials = paper.with_method_info(trials, root)
    spec, spec_text = _read_spec(root, problems)
    dbs = sorted({*root.glob(layout.OPTUNA_FILE), *root.glob(f"*/{layout.OPTUNA_FILE}")})
    return Study(root=root, trials=trials, history=history, spec=spec, spec_text=spec_text, optuna_dbs=dbs,
                 experiments=layout.experiment_dirs(root), problems=problems)


def _history(trial_id: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per reported epoch (``layout.read_results`` already kept one line per epoch)."""
    out = []
    for i, row in enumerate(rows):
        metrics = _metrics(row)
        epoch = metrics.pop(layout.EPOCH, metrics.get("training_iteration", i + 1))
        out.append({"trial_id": trial_id, "epoch": epoch, **metrics})
    return pd.DataFrame.from_records(out)


STAGE_KINDS = ("teachers", "search", "final", "grid")
"""Kinds of experiment a ``study run`` writes (``study.json`` lists them): the teacher stage, an Optuna search,
the selected configuration re-run over seeds, and a grid."""


def _stage_kind_from_name(experiment: str) -> str | None:
    head = Path(experiment).name.split("-", 1)[0]
    return head if head in STAGE_KINDS else None


def _read_spec(root: Path, problems: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    path = root / layout.SPEC_FILE
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
