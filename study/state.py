"""The study's status: one summary row per trial of the stages in ``study.json``, and ``study status``'s table.

Read through ``study.layout`` (the owner of the study-dir format), so no Ray and no torch. A row takes the
trial's last result and its best value of the metric from the current experiment state (Tune keeps both for
every trial); only a trial the state has no result for yet falls back to its ``result.json``. That keeps
``status`` at one small JSON file per stage instead of every reported line of every trial.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import layout


def _last_and_best(trial: layout.Trial, metric: str, mode: str) -> tuple[dict[str, Any], float | None]:
    last = trial["last_result"]
    stats = trial["metric_analysis"].get(metric) if isinstance(trial["metric_analysis"], dict) else None
    if last and isinstance(stats, dict) and mode in stats:
        return last, layout.finite(stats[mode])
    results = layout.read_results(trial["dir"])
    values = [v for v in (layout.finite(r.get(metric)) for r in results) if v is not None]
    best = (max(values) if mode == "max" else min(values)) if values else None
    return (results[-1] if results else last), best


def trial_rows(study_dir: str | Path, stages: Iterable[str] | None = None, metric: str = layout.VAL_TOP1,
               mode: str = "max") -> list[dict[str, Any]]:
    """One dict per listed trial of the study: stage, trial, method, pair, seed, params, state, epoch, metrics."""
    study_dir = Path(study_dir)
    manifest = layout.load_manifest(study_dir)
    wanted = set(stages) if stages is not None else None
    rows = []
    for stage in manifest["stages"]:
        if wanted is not None and stage["name"] not in wanted:
            continue
        for trial in layout.experiment_trials(study_dir / stage["name"]):
            params = trial["config"] or layout.read_params(trial["dir"])
            last, best = _last_and_best(trial, metric, mode)
            error = (layout.read_error(trial["dir"]) or "") if trial["status"] == layout.ERROR else ""
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
                    "epoch": last.get(layout.EPOCH),
                    "epochs": params.get("epochs"),
                    f"last {metric}": layout.finite(last.get(metric)),
                    f"best {metric}": best,
                    layout.TEST_TOP1: layout.finite(last.get(layout.TEST_TOP1)),
                    "error": error,
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


def _size(n: int) -> str:
    """Bytes as people read them: ``812 KiB``, ``3.4 GiB`` (``teacher_stream_max_gb`` counts GiB, 2**30 bytes)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def status_table(study_dir: str | Path, metric: str = layout.VAL_TOP1, mode: str = "max") -> str:
    """A plain-text table: one row per trial, grouped by stage, with the parameters that vary in it."""
    rows = trial_rows(study_dir, metric=metric, mode=mode)
    manifest = layout.load_manifest(study_dir)
    lines = [f"study {manifest.get('name')} at {Path(study_dir).absolute()}"]
    size, epochs = layout.stream_size(study_dir)
    if epochs:
        lines.append(f"teacher stream: {_size(size)} in {epochs} epoch(s) ({layout.STREAM_DIR}/)")
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
