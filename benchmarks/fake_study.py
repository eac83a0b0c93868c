"""Study dirs of the paper's Table-1 shape with synthetic metrics, laid out exactly as ``study run`` writes them.

``make_study(root)`` writes what a grid study with a teacher stage leaves on disk (README "Study dir
layout"): ``spec.yaml``, ``study.json`` (stages ``teachers`` and ``grid-<method>``, the trained teachers),
one Ray Tune experiment folder per stage with ``experiment_state-<session>.json`` (``trial_data`` entries
``[trial JSON, runtime JSON]`` with ``status``, ``relative_logdir``, ``config``, ``last_result`` and
``metric_analysis``), ``basic-variant-state-<session>.json`` and ``.state-backup/``, and per trial
``params.json``, ``result.json`` (one line per epoch, Ray's bookkeeping keys and ``config`` included),
``progress.csv``, ``epoch_log.jsonl`` and the last ``checkpoint_NNNNNN/meta.json``. The pickles Tune also
writes (``tuner.pkl``, ``params.pkl``) and model weights are left out: nothing outside Ray reads them.

Metrics are synthetic but shaped like a run: accuracy rises with a step learning-rate schedule to a final
test top-1 near the paper's Table-1 number of the cell (plus a per-method offset and seed noise), loss terms
fall, distillation methods log the error-bound terms. The tests and ``python -m benchmarks report`` share it.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from study import layout

TABLE1_PAIRS: tuple[tuple[str, str], ...] = (
    ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
)
TABLE1_METHODS: tuple[str, ...] = ("ce", "fitnet", "kd", "vid", "rkd", "pkt", "crd", "wsld", "dkd", "srrl", "simkd",
                                   "ijckd")
"""Twelve student methods of the paper's Table 1 (the teacher stage comes on top)."""

_KNOBS: dict[str, dict[str, Any]] = {
    "ce": {}, "kd": {"temperature": 4.0, "kd_weight": 0.9, "ce_weight": 0.1}, "fitnet": {"hint_weight": 100.0},
    "dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 20}, "srrl": {"sr_weight": 1.0},
    "simkd": {"connector_depth": 1}, "ijckd": {"connector_depth": 1, "loss_combination": "sr", "alpha_ce": 1.0},
}
_PAPER_LABEL = {"ce": "student_ce", "fitnet": "FitNet", "ijckd": "IJCKD", "simkd": "SimKD"}
_SESSION = "2026-01-01_00-00-00"


def trials_for(n_trials: int, methods: int = len(TABLE1_METHODS), pairs: int = len(TABLE1_PAIRS)) -> int:
    """Seeds per cell so that teachers + methods x pairs x seeds is closest to ``n_trials`` (at least 1)."""
    teachers = len({t for t, _ in TABLE1_PAIRS})
    return max(1, round((n_trials - teachers) / (methods * pairs)))


def _paper_top1() -> dict[tuple[str, str, str], float]:
    path = Path(__file__).resolve().parents[1] / "analysis" / "paper_tables" / "ijckd_table1_cifar100.csv"
    with path.open() as fh:
        return {(r["method"], r["teacher"], r["student"]): float(r["top1"]) for r in csv.DictReader(fh)}


def _label(method: str) -> str:
    return _PAPER_LABEL.get(method, method.upper())


def _lr(epoch: int, epochs: int, base: float) -> float:
    return base * 0.1 ** sum(epoch > round(epochs * m / 240) for m in (150, 180, 210))


def _history(rng: random.Random, final: float, epochs: int, method: str, distill: bool, base_lr: float
             ) -> list[dict[str, Any]]:
    """Per-epoch metrics rising to ``final`` (test top-1 at the last epoch), with a step schedule."""
    rows = []
    for e in range(1, epochs + 1):
        decays = sum(e > round(epochs * m / 240) for m in (150, 180, 210))
        gap = (18.0 - 6.0 * decays) * math.exp(-3.0 * e / epochs) + (4.0 - 1.3 * decays)
        val = max(1.0, final - gap + rng.gauss(0, 0.4))
        train = min(99.9, val + 8.0 + 6.0 * decays + rng.gauss(0, 0.3))
        ce = max(0.01, 4.6 * math.exp(-2.5 * e / epochs) * (0.5 ** decays) + rng.gauss(0, 0.01))
        row: dict[str, Any] = {"epoch": e, "val/top1": val, "train/loss": ce, "lr": _lr(e, epochs, base_lr),
                               "train/loss_ce": ce, "train/top1": train, "throughput/img_s": 2400 + rng.gauss(0, 50),
                               "val/top5": min(99.9, val + 20.0)}
        if distill:
            extra = 0.6 * ce + rng.gauss(0, 0.01)
            row[f"train/loss_{method}"] = extra
            row["train/loss"] = ce + extra
            teacher_err = 100.0 - (final + 3.5)
            student_err = 100.0 - val
            d1, d2 = 0.6 * student_err, 0.3 * student_err
            row.update({"bound/teacher_err": teacher_err, "bound/student_err": student_err,
                        "fidelity/top1": 100.0 - d1, "bound/delta1": d1, "bound/delta2": d2,
                        "bound/rhs": teacher_err + d1 + d2, "teacher_calls": 50000 * e})
        row["time/epoch_s"] = 20.0 + rng.gauss(0, 0.5)
        rows.append(row)
    last = rows[-1]
    last["val/top1"] = final + rng.gauss(0, 0.3)
    last["test/top1"], last["test/top5"] = final, min(99.9, final + 19.0)
    return rows


def _with_ray_keys(rows: list[dict[str, Any]], trial_id: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    out, total = [], 0.0
    for i, row in enumerate(rows, start=1):
        total += row["time/epoch_s"]
        out.append({**row, "timestamp": 1767225600 + int(total), "checkpoint_dir_name": f"checkpoint_{i - 1:06d}",
                    "should_checkpoint": True, "done": i == len(rows), "training_iteration": i, "trial_id": trial_id,
                    "date": _SESSION, "time_this_iter_s": row["time/epoch_s"], "time_total_s": total, "pid": 1000,
                    "hostname": "fake", "node_ip": "192.0.2.1", "config": config, "time_since_restore": total,
                    "iterations_since_restore": i})
    return out


def _metric_analysis(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key in rows[-1]:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
        if values:
            out[key] = {"max": max(values), "min": min(values), "avg": sum(values) / len(values), "last": values[-1],
                        "last-5-avg": sum(values[-5:]) / len(values[-5:]),
                        "last-10-avg": sum(values[-10:]) / len(values[-10:])}
    return out


def _write_trial(exp_dir: Path, name: str, trial_id: str, config: dict[str, Any], rows: list[dict[str, Any]]
                 ) -> list[str]:
    folder = exp_dir / name
    folder.mkdir(parents=True)
    (folder / layout.PARAMS_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    full = _with_ray_keys(rows, trial_id, config)
    (folder / layout.RESULT_FILE).write_text("".join(json.dumps(r) + "\n" for r in full))
    columns = [k for k in full[-1] if k != "config"]
    with (folder / layout.PROGRESS_FILE).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(full)
    (folder / layout.EPOCH_LOG).write_text("".join(json.dumps({"epoch": r["epoch"], "pid": 1000, "host": "fake",
                                                               "time": r["timestamp"]}) + "\n" for r in full))
    ckpt = folder / f"checkpoint_{len(rows) - 1:06d}"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text(json.dumps({"epoch": len(rows)}))
    runtime = {"start_time": 1767225600.0, "num_failures": 0, "num_failures_after_restore": 0, "error_filename": None,
               "pickled_error_filename": None, "last_result": full[-1], "last_result_time": 1767225600.0 + len(rows),
               "metric_analysis": _metric_analysis(rows), "_n_steps": [5, 10], "metric_n_steps": {}}
    trial = {"stub": False, "trainable_name": config["method"], "trial_id": trial_id, "config": config,
             "evaluated_params": {}, "experiment_tag": trial_id.rsplit("_", 1)[-1].lstrip("0") or "0",
             "status": layout.TERMINATED, "relative_logdir": name, "custom_dirname": name, "max_failures": 2}
    return [json.dumps(trial), json.dumps(runtime)]


def _write_experiment(exp_dir: Path, entries: list[list[str]]) -> None:
    state = {"trial_data": entries, "runner_data": {"_metric": layout.VAL_TOP1, "_session_str": _SESSION},
             "stats": {"start_time": 1767225600.0}}
    text = json.dumps(state)
    (exp_dir / f"experiment_state-{_SESSION}.json").write_text(text)
    (exp_dir / f"basic-variant-state-{_SESSION}.json").write_text(json.dumps({"finished": True}))
    (exp_dir / ".validate_storage_marker").write_text("")
    backup = exp_dir / ".state-backup"
    backup.mkdir()
    shutil.copy2(exp_dir / f"experiment_state-{_SESSION}.json", backup)


def make_study(root: str | Path, name: str = "table1-fake", seeds: Sequence[int] = (0, 1, 2), epochs: int = 240,
               methods: Sequence[str] = TABLE1_METHODS, pairs: Sequence[tuple[str, str]] = TABLE1_PAIRS,
               seed: int = 0) -> Path:
    """Write a finished grid study (teachers + one grid stage per method) under ``root/name``; return its path."""
    study_dir = Path(root) / name
    if study_dir.exists():
        raise FileExistsError(f"{study_dir} already exists")
    study_dir.mkdir(parents=True)
    rng = random.Random(seed)
    paper = _paper_top1()
    teachers = list(dict.fromkeys(t for t, _ in pairs))
    base = {"dataset": "cifar100", "data_root": "./data", "batch_size": 64, "weight_decay": 0.0005, "epochs": epochs}
    spec = {"name": name, "description": "synthetic Table-1 shape (benchmarks.fake_study)", "storage_path": str(root),
            "data": {"dataset": "cifar100", "root": "./data"}, "teacher": {"train": True, "epochs": epochs, "seed": 0},
            "pairs": [{"teacher": t, "student": s} for t, s in pairs], "methods": list(methods),
            "config": {"epochs": epochs}, "seeds": list(seeds), "metric": layout.VAL_TOP1, "mode": "max",
            "report": False}
    (study_dir / layout.SPEC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    stages = [{"name": "teachers", "kind": "teachers", "method": "teacher", "pair": None}]
    stages += [{"name": f"grid-{m}", "kind": "grid", "method": m, "pair": None} for m in methods]
    manifest: dict[str, Any] = {"name": name, "created": "2026-01-01 00:00:00", "layout": 1, "stages": [],
                                "teachers": {}}
    # teachers
    exp = study_dir / "teachers"
    entries = []
    for i, arch in enumerate(teachers):
        trajectory = study_dir / "teachers" / "trajectories" / arch
        trajectory.mkdir(parents=True, exist_ok=True)
        final = paper.get(("teacher", arch, next(s for t, s in pairs if t == arch)), 75.0)
        config = {**base, "method": "teacher", "teacher": arch, "seed": 0, "lr": 0.05,
                  "trajectory_dir": str(trajectory)}
        trial_id, folder = f"7e4c0_{i:05d}", f"teacher_7e4c0_{i:05d}"
        rows = _history(rng, final, epochs, "teacher", False, 0.05)
        entries.append(_write_trial(exp, folder, trial_id, config, rows))
        manifest["teachers"][arch] = {"checkpoint": str(trajectory / "final.pt"), "trajectory": str(trajectory),
                                      "trial": folder, "val/top1": rows[-1]["val/top1"]}
    _write_experiment(exp, entries)
    # one grid stage per method: pairs x seeds
    for j, method in enumerate(methods):
        exp = study_dir / f"grid-{method}"
        entries = []
        offset = rng.gauss(0, 0.6)
        for k, ((t, s), sd) in enumerate((p, sd) for p in pairs for sd in seeds):
            reference = paper.get((_label(method), t, s)) or paper.get(("KD", t, s), 72.0)
            final = reference + offset + rng.gauss(0, 0.3)
            lr = 0.01 if s.startswith("Shuffle") else 0.05
            config = {**base, "method": method, "teacher": t, "student": s, "pair": layout.pair_label(t, s),
                      "seed": sd, "lr": lr, **_KNOBS.get(method, {f"{method}_weight": 1.0})}
            if method != "ce":
                config["teacher_checkpoint"] = str(study_dir / "teachers" / "trajectories" / t / "final.pt")
            trial_id = f"{j:02x}a{j:02x}_{k:05d}"
            rows = _history(rng, final, epochs, method, method != "ce", lr)
            entries.append(_write_trial(exp, f"{method}_{trial_id}", trial_id, config, rows))
        _write_experiment(exp, entries)
    for stage in stages:
        n = len(list((study_dir / stage["name"]).glob("*/params.json")))
        manifest["stages"].append({**stage, "status": "done", "trials": n, "errored": 0})
    layout.save_manifest(study_dir, manifest)
    return study_dir


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.fake_study", description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--name", default="table1-fake")
    parser.add_argument("--trials", type=int, default=293, help="about this many trials (seeds per cell follow)")
    parser.add_argument("--epochs", type=int, default=240)
    args = parser.parse_args(argv)
    path = make_study(args.root, args.name, seeds=range(trials_for(args.trials)), epochs=args.epochs)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
