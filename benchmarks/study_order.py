"""``python -m benchmarks study SPEC [--json]``: one spec run twice on this machine, ``scheduling: sequential``
then ``concurrent``; the wall time of each, their ratio, the slot utilisation, and whether every trial that
both ran (same stage, same config) has the same metrics.

Each run is its own ``python -m study run`` (its own local Ray, the spec's ``ray.num_cpus`` or all cores) into
a temporary storage folder. Utilisation comes from the trials' own files: epoch time is the sum of
``time/epoch_s`` over every reported epoch, weighted by the slots the trial held (the teacher stage's trial
takes several CPUs), over slots x wall time; "busy" does the same with each trial's span from its first
epoch's start to its last report (its start-up and checkpoint time included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

MODES = ("sequential", "concurrent")
COMPARED = ("epoch", "train/loss", "val/top1", "test/top1")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks study", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="a study spec (YAML)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--storage", default=None, help="folder for the two study dirs (default: a temporary one)")
    return p.parse_args(argv)


def _slots(data: dict[str, Any]) -> tuple[float, float, float]:
    """(CPUs of the local Ray, CPUs per trial, CPUs of the teacher trial), as the study computes them."""
    from study.resources import Node, teacher_resources

    cpus = float((data.get("ray") or {}).get("num_cpus") or os.cpu_count() or 1)
    per_trial = float((data.get("resources") or {}).get("cpu", 1))
    teachers = len({p["teacher"] for p in data.get("pairs", [])}) or 1
    teacher = teacher_resources({"cpu": per_trial, "gpu": 0}, [Node("local", cpus, 0.0)], teachers)["cpu"]
    return cpus, per_trial, float(teacher)


def run_mode(spec_data: dict[str, Any], mode: str, storage: Path) -> dict[str, Any]:
    """Run the spec with ``scheduling: mode``; its wall time and study dir."""
    data = {**spec_data, "name": f"{spec_data.get('name', 'study')}-{mode}", "storage_path": str(storage),
            "scheduling": mode, "report": False}
    path = storage / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--no-report", "--verbose", "0"],
                         capture_output=True, text=True)
    wall = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit(f"the {mode} run failed ({out.returncode}): {out.stderr[-2000:]}")
    return {"mode": mode, "wall_s": round(wall, 1), "study_dir": str(storage / data["name"])}


def trial_files(study_dir: Path) -> list[dict[str, Any]]:
    """Per trial: stage, config (without the study dir's own paths), reported metrics, epoch seconds and span,
    from its own files."""
    from study.layout import read_results
    from study.state import trial_rows

    out = []
    for row in trial_rows(study_dir):
        results = read_results(row["dir"])
        log_path = Path(row["dir"]) / "epoch_log.jsonl"
        log = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()] if log_path.is_file() else []
        epoch_s = sum(float(r.get("time/epoch_s") or 0.0) for r in results)
        span = (log[-1]["time"] - log[0]["time"] + float(results[0].get("time/epoch_s") or 0.0)) if log and results \
            else 0.0
        config = {k: v for k, v in row["params"].items() if not str(v).startswith(str(study_dir))}  # own paths
        out.append({"stage": row["stage"], "kind": row["kind"], "config": json.dumps(config, sort_keys=True),
                    "metrics": [[r.get(k) for k in COMPARED] for r in results], "epoch_s": epoch_s, "span_s": span})
    return out


def measure(spec_data: dict[str, Any], storage: Path) -> dict[str, Any]:
    cpus, per_trial, teacher = _slots(spec_data)
    slots = cpus / per_trial
    runs = []
    for mode in MODES:
        run = run_mode(spec_data, mode, storage)
        trials = trial_files(Path(run["study_dir"]))
        weight = [(teacher if t["kind"] == "teachers" else per_trial) / per_trial for t in trials]
        slot_time = slots * run["wall_s"]
        run.update(trials=len(trials),
                   epoch_utilisation=round(sum(w * t["epoch_s"] for w, t in zip(weight, trials)) / slot_time, 3),
                   busy_utilisation=round(sum(w * t["span_s"] for w, t in zip(weight, trials)) / slot_time, 3))
        run["_metrics"] = {(t["stage"], t["config"]): t["metrics"] for t in trials}
        runs.append(run)
    return {"spec": spec_data.get("name"), "slots": slots, "cpus": cpus, "runs": runs,
            "ratio": round(runs[1]["wall_s"] / runs[0]["wall_s"], 3),
            **compare_trials(runs[0].pop("_metrics"), runs[1].pop("_metrics")), "load_average": os.getloadavg()}


def compare_trials(first: dict[tuple, Any], second: dict[tuple, Any]) -> dict[str, Any]:
    """Per-trial agreement of two runs: every (stage, config) that both ran must have the same metrics.

    A search whose sampler conditions on finished trials (TPE after its start-up trials) asks for its later
    configs at moments that depend on when the earlier trials ended, which the stage order changes; such
    trials (and a final stage whose best config differs in consequence) are counted, not compared.
    """
    shared = sorted(set(first) & set(second))
    return {"identical_metrics": bool(shared) and all(first[k] == second[k] for k in shared),
            "trials_compared": len(shared), "trials_in_one_run_only": len(set(first) ^ set(second))}


def format_text(result: dict[str, Any]) -> str:
    lines = [f"study {result['spec']}: {result['slots']:g} slots ({result['cpus']:g} CPUs), "
             f"load average {', '.join(f'{x:.2f}' for x in result['load_average'])}"]
    for run in result["runs"]:
        lines.append(f"  {run['mode']:<10}  wall {run['wall_s']:7.1f} s  trials {run['trials']:3d}  "
                     f"epoch utilisation {run['epoch_utilisation']:.2f}  busy {run['busy_utilisation']:.2f}")
    lines.append(f"  concurrent / sequential wall time: {result['ratio']:.2f}; per-trial metrics of the "
                 f"{result['trials_compared']} trials with the same config in both: "
                 f"{'identical' if result['identical_metrics'] else 'DIFFER'}"
                 f"; {result['trials_in_one_run_only']} trial(s) with a config only one run asked for")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse(argv)
    spec_data = yaml.safe_load(Path(args.spec).read_text())
    if args.storage:
        storage = Path(args.storage).absolute()
        storage.mkdir(parents=True, exist_ok=True)
        result = measure(spec_data, storage)
    else:
        with tempfile.TemporaryDirectory(prefix="kd-studybench-") as tmp:
            result = measure(spec_data, Path(tmp))
    print(json.dumps(result) if args.json else format_text(result), flush=True)
    return 0 if result["identical_metrics"] else 1
