"""Reading a study dir with plain json/pandas: no Ray, no torch, works on a copied folder.

Layout (README "Study dir"): ``spec.yaml``, ``study.json`` (the stages and what they produced),
``optuna.db`` and one Ray Tune experiment folder per stage. Inside an experiment folder the trial list and
each trial's status come from the newest ``experiment_state-*.json``; everything else from the trial
folders (``params.json``, ``result.json``, ``error.txt``). Trial folders that the experiment state does not
list (left by a driver killed before it could record them) are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "study.json"
SPEC_FILE = "spec.yaml"
OPTUNA_FILE = "optuna.db"
TERMINAL = ("TERMINATED", "ERROR")


def load_manifest(study_dir: str | Path) -> dict[str, Any]:
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


def experiment_state_file(exp_dir: str | Path) -> Path | None:
    files = sorted(Path(exp_dir).glob("experiment_state-*.json"))
    return files[-1] if files else None


def experiment_trials(exp_dir: str | Path) -> list[dict[str, Any]]:
    """``[{trial_id, status, dir, config}]`` from the newest experiment state (empty if none yet)."""
    state_file = experiment_state_file(exp_dir)
    if state_file is None:
        return []
    try:
        data = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for entry in data.get("trial_data", []):
        raw = entry[0] if isinstance(entry, list) else entry
        state = json.loads(raw) if isinstance(raw, str) else raw
        config = state.get("config")
        out.append(
            {
                "trial_id": state.get("trial_id"),
                "status": state.get("status"),
                "dir": Path(exp_dir) / str(state.get("relative_logdir")),
                "config": config if isinstance(config, dict) else {},
                "trainable": state.get("trainable_name"),
            }
        )
    return out


def read_results(trial_dir: str | Path) -> list[dict[str, Any]]:
    """The trial's ``result.json`` lines, one per reported epoch (a later line for an epoch wins)."""
    path = Path(trial_dir) / "result.json"
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        by_epoch[row.get("epoch", len(by_epoch))] = row
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]


def read_params(trial_dir: str | Path, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    path = Path(trial_dir) / "params.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    return dict(fallback or {})


def read_error(trial_dir: str | Path) -> str:
    """The last meaningful line of the trial's ``error.txt`` (the exception message), or ''."""
    path = Path(trial_dir) / "error.txt"
    if not path.is_file():
        return ""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def trial_rows(study_dir: str | Path, stages: Iterable[str] | None = None, metric: str = "val/top1",
               mode: str = "max") -> list[dict[str, Any]]:
    """One dict per trial of the study: stage, trial, method, pair, seed, params, state, epoch, metrics."""
    study_dir = Path(study_dir)
    manifest = load_manifest(study_dir)
    wanted = set(stages) if stages is not None else None
    rows = []
    for stage in manifest["stages"]:
        if wanted is not None and stage["name"] not in wanted:
            continue
        for trial in experiment_trials(study_dir / stage["name"]):
            params = read_params(trial["dir"], trial["config"])
            results = read_results(trial["dir"])
            values = [_finite(r.get(metric)) for r in results]
            values = [v for v in values if v is not None]
            last = results[-1] if results else {}
            best = (max(values) if mode == "max" else min(values)) if values else None
            rows.append(
                {
                    "stage": stage["name"],
                    "kind": stage["kind"],
                    "trial": trial["dir"].name,
                    "trial_id": trial["trial_id"],
                    "method": params.get("method", stage.get("method")),
                    "pair": params.get("pair"),
                    "seed": params.get("seed"),
                    "params": params,
                    "state": trial["status"],
                    "epoch": last.get("epoch"),
                    "epochs": params.get("epochs"),
                    f"last {metric}": _finite(last.get(metric)),
                    f"best {metric}": best,
                    "test/top1": _finite(last.get("test/top1")),
                    "error": read_error(trial["dir"]) if trial["status"] == "ERROR" else "",
                    "dir": str(trial["dir"]),
                }
            )
    return rows


def varying_keys(rows: list[dict[str, Any]], skip: Iterable[str] = ("seed", "pair", "method")) -> list[str]:
    """Config keys whose value differs between the given trials (the ones worth a column)."""
    skip = set(skip)
    keys: dict[str, set[str]] = {}
    for row in rows:
        for k, v in row["params"].items():
            keys.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    partial = {k for k in keys if any(k not in r["params"] for r in rows)}
    return [k for k, vals in keys.items() if k not in skip and (len(vals) > 1 or k in partial)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def status_table(study_dir: str | Path, metric: str = "val/top1", mode: str = "max") -> str:
    """A plain-text table: one row per trial, grouped by stage, with the parameters that vary in it."""
    rows = trial_rows(study_dir, metric=metric, mode=mode)
    manifest = load_manifest(study_dir)
    lines = [f"study {manifest.get('name')} at {Path(study_dir).absolute()}"]
    for stage in manifest["stages"]:
        stage_rows = [r for r in rows if r["stage"] == stage["name"]]
        note = f" ({stage['note']})" if stage.get("note") else ""
        lines.append("")
        status = stage.get("status", "pending")
        what = stage["kind"] if stage["kind"] == "teachers" else f"{stage['kind']} of {stage.get('method')}"
        lines.append(f"[{stage['name']}] {what}: {status}{note}")
        if not stage_rows:
            continue
        keys = varying_keys(stage_rows)
        header = ["trial", "method", "pair", "seed", *keys, "state", "epoch", f"best {metric}", "test/top1", "error"]
        table = [header]
        for r in stage_rows:
            epoch = f"{_fmt(r['epoch'])}/{_fmt(r['epochs'])}"
            cells = [r["trial"], r["method"], r["pair"], r["seed"], *[r["params"].get(k) for k in keys], r["state"],
                     epoch, r[f"best {metric}"], r["test/top1"], r["error"][:80]]
            table.append([_fmt(c) for c in cells])
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
