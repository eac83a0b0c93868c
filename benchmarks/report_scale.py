"""``python -m benchmarks report [--trials 293 1000] [--epochs 240] [--json]``: the report and ``study status`` at
the size of the paper's comparison.

For each trial count it writes a study dir of Table-1 shape (``benchmarks.fake_study``: teachers + one grid stage
per method, 12 methods x 8 pairs x seeds, as ``study run`` lays it out) into a temporary folder, then times, each
in a fresh Python process (so imports count, as for a user): ``build_report`` (wall, CPU time of the process and
peak RSS) and ``python -m study status`` (wall and CPU). It prints one line per trial count, or one JSON object.
The machine's load average is printed with the figures: on a shared machine wall time follows the load, the CPU
time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .fake_study import make_study, trials_for

REPO = Path(__file__).resolve().parents[1]

_REPORT = """
import json, resource, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from analysis.report import build_report
page = build_report(sys.argv[1], sys.argv[2])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss, "html_mb": page.stat().st_size / 2**20}))
"""


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_status(study_dir: Path) -> dict[str, float]:
    cpu0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "study", "status", str(study_dir)], cwd=REPO, capture_output=True,
                          text=True, check=True)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    return {"status_wall_s": wall, "status_cpu_s": cpu, "status_lines": proc.stdout.count("\n")}


def measure(n_trials: int, epochs: int, root: Path) -> dict[str, Any]:
    seeds = trials_for(n_trials)
    t0 = time.perf_counter()
    study_dir = make_study(root, f"table1-{n_trials}", seeds=range(seeds), epochs=epochs)
    made = time.perf_counter() - t0
    trials = len(list(study_dir.glob("*/*/params.json")))
    status = _time_status(study_dir)
    proc = subprocess.run([sys.executable, "-c", _REPORT, str(study_dir), str(root / f"report-{n_trials}")], cwd=REPO,
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"trials": trials, "seeds": seeds, "epochs": epochs, "history_rows": (trials * epochs),
            "generate_s": made, **{f"report_{k}" if not k.startswith("html") else k: v for k, v in report.items()},
            **status, "load_avg_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[293, 1000],
                        help="approximate trial counts of the generated studies (default: 293 1000)")
    parser.add_argument("--epochs", type=int, default=240, help="epochs per trial (default 240, the paper's)")
    parser.add_argument("--keep", default=None, help="write the study dirs and reports here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.trials) or args.epochs < 1:
        print("error: --trials and --epochs must be positive integers", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="kdstudy-report-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for n in args.trials:
            load0 = os.getloadavg()[0]
            row = measure(n, args.epochs, root)
            row["load_avg_1m_before"] = load0
            results.append(row)
            if not args.json:
                print(f"{row['trials']:5d} trials ({row['seeds']} seeds, {row['history_rows']} history rows): "
                      f"report {row['report_wall_s']:.1f} s wall / {row['report_cpu_s']:.1f} s CPU, "
                      f"peak RSS {row['report_peak_rss_mb']:.0f} MB, report.html {row['html_mb']:.1f} MB; "
                      f"study status {row['status_wall_s']:.2f} s wall / {row['status_cpu_s']:.2f} s CPU "
                      f"(load average {load0:.1f} -> {row['load_avg_1m']:.1f} on {os.cpu_count()} cores)", flush=True)
    if args.json:
        print(json.dumps({"benchmark": "report", "cores": os.cpu_count(), "results": results}, indent=1))
    return 0
