"""``python -m study bench`` hands every flag to the benchmark unchanged (``--json``, ``--help``, the rest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from study.__main__ import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--student", "resnet8", "--teacher", "resnet8", "--method", "kd", "--classes", "10", "--batch-size", "4",
        "--steps", "1", "--warmup", "1", "--max-seconds", "5", "--loops", "platform", "--device", "cpu",
        "--threads", "1"]


def test_study_bench_json_is_the_benchmarks_json():
    out = subprocess.run([sys.executable, "-m", "study", "bench", "--json", *TINY], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["mode"] == "single" and result["platform"]["steps"] == 1 and result["platform"]["img_s"] > 0
    assert result["settings"]["student"] == "resnet8" and result["settings"]["batch_size"] == 4


def test_study_bench_help_shows_the_benchmarks_flags(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--json", "--steps", "--max-seconds", "--pack", "--loops"):
        assert flag in text


def test_study_bench_bad_flag_is_the_benchmarks_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--no-such-flag"])
    assert done.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_study_help_lists_bench(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "bench" in capsys.readouterr().out


def test_study_benchmark_compares_the_trials_both_runs_asked_for():
    from benchmarks.study_order import compare_trials

    a = {("search-kd", "lr 0.1"): [[1, 0.5]], ("search-kd", "lr 0.2"): [[1, 0.4]]}
    same_plus_other = {("search-kd", "lr 0.1"): [[1, 0.5]], ("search-kd", "lr 0.3"): [[1, 0.6]]}
    assert compare_trials(a, same_plus_other) == {"identical_metrics": True, "trials_compared": 1,
                                                  "trials_in_one_run_only": 2}
    assert not compare_trials(a, {("search-kd", "lr 0.1"): [[1, 0.51]]})["identical_metrics"]
    assert not compare_trials(a, {("search-kd", "lr 0.9"): [[1, 0.5]]})["identical_metrics"]  # nothing to compare
