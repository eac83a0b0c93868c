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
