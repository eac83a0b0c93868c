"""The GPU check script, dry-run on the CPU (``--cpu-smoke``), its summary, and the sync check's CPU path.

The figures of a smoke run mean nothing (tiny models, a shared CPU); what is checked is that every step
runs to its result file and the summary reads each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, sync_check
from benchmarks.throughput import Settings, make_teacher_file, trial_config
from trainables.loop import build_trial

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CORE = ["env", "nvidia-smi", "pytest-gpu", "bench-single", "teacher", "epochs-eager", "bench-pack2", "epochs-compile"]
VARIANTS = ["sync-check", "epochs-eval2048", "bench-compile", "bench-compile-ro", "bench-pack2-compile"]


def run_script(outdir: Path, *flags: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("KDSTUDY_GPU_TEST_DEVICE", None)
    return subprocess.run(["bash", str(SCRIPT), str(outdir), *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def steps(outdir: Path) -> dict[str, dict]:
    return {s["name"]: s for s in map(json.loads, (outdir / "steps.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_cpu_smoke_runs_every_core_step_and_summarises_it(tmp_path):
    out = tmp_path / "check"
    done = run_script(out, "--cpu-smoke", "--budget", "1400")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    recorded = steps(out)
    assert list(recorded) == CORE
    ran = {name: s for name, s in recorded.items() if name != "nvidia-smi" or s["status"] != "skipped"}
    assert all(s["status"] == "ok" for s in ran.values()), recorded
    summary = json.loads((out / "summary.json").read_text())
    rows = {s["name"]: s for s in summary["steps"]}
    assert summary["not_ok"] == [] and (out / "summary.txt").read_text() in done.stdout
    assert rows["env"]["figures"]["torch"] == torch.__version__ and rows["env"]["figures"]["ray"] is not None
    tests = rows["pytest-gpu"]["figures"]
    if not torch.cuda.is_available():
        assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"]  # collected, and all skip on the CPU
    single = rows["bench-single"]["figures"]
    assert single["platform_img_s"] > 0 and single["reference_img_s"] > 0 and single["ratio"] > 0
    pack = rows["bench-pack2"]["figures"]
    assert pack["trials"] == 2 and pack["backend"] == "processes"
    assert pack["platform_packed_over_reference_single"] == pytest.approx(
        pack["platform"]["packed_img_s"] / pack["reference"]["single_img_s"])
    for name in ("epochs-eager", "epochs-compile"):
        trial = rows[name]["figures"]
        assert len(trial["epoch_s"]) == 2 and all(t > 0 for t in trial["epoch_s"])
        assert trial["projected_240_epochs_s"] == pytest.approx(trial["epoch_s"][0] + 239 * trial["epoch_s"][1])
    progress = [json.loads(line) for line in (out / "epochs-compile" / "progress.jsonl").read_text().splitlines()]
    assert [p["epoch"] for p in progress] == [1, 2]
    table = done.stdout.splitlines()[-len(CORE) - 2:]  # the summary table ends the output
    assert table[0].startswith("step") and [line.split()[0] for line in table[1:-1]] == CORE


def test_a_spent_budget_skips_every_step_and_the_summary_says_so(tmp_path):
    out = tmp_path / "check"
    done = run_script(out, "--cpu-smoke", "--variants", "--budget", "0", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    recorded = steps(out)
    assert list(recorded) == CORE + VARIANTS
    assert all(s["status"] == "skipped" for s in recorded.values())
    text = (out / "summary.txt").read_text()
    assert "budget left" in text and "every step ok" in text


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    for flags in (["--budget", "soon"], ["--fast"]):
        done = run_script(tmp_path / "x", *flags, timeout=60)
        assert done.returncode == 2 and done.stderr.count("\n") <= 2, done.stderr
    no_dir = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert no_dir.returncode == 2 and "usage" in no_dir.stderr


def test_a_failed_or_timed_out_step_is_reported_not_ok(tmp_path):
    (tmp_path / "steps.jsonl").write_text("\n".join(json.dumps(s) for s in [
        {"name": "bench-single", "kind": "bench", "status": "timeout", "rc": 124, "seconds": 120, "timeout": 120,
         "log": "bench-single.log", "result": "bench-single.json"},
        {"name": "pytest-gpu", "kind": "pytest", "status": "ok", "rc": 0, "seconds": 3, "timeout": 150,
         "log": "pytest-gpu.log", "result": "pytest_gpu.xml"},
    ]) + "\n")
    (tmp_path / "bench-single.json").write_text("")
    (tmp_path / "pytest_gpu.xml").write_text("<testsuites><testsuite tests='3' failures='1' errors='0' skipped='0'>"
                                             "<testcase name='a'/><testcase name='b'><failure/></testcase>"
                                             "<testcase name='c'/></testsuite></testsuites>")
    assert gpu_check.main(["summary", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["not_ok"] == ["bench-single"]
    rows = {s["name"]: s for s in summary["steps"]}
    assert rows["bench-single"]["text"].startswith("timeout (exit 124")
    assert rows["pytest-gpu"]["figures"]["passed"] == 2 and rows["pytest-gpu"]["figures"]["failed_tests"] == ["b"]
    assert gpu_check.main(["summary", str(tmp_path / "nothing")]) == 2


def test_sync_check_runs_the_steps_on_the_cpu_and_counts_nothing(tmp_path):
    settings = Settings(method="kd", student="resnet8", teacher="resnet8", batch_size=8, steps=4, warmup=2,
                        device="cpu", classes=10)
    trial = build_trial(trial_config(settings, make_teacher_file(settings, tmp_path)), workdir=tmp_path)
    before = [p.detach().clone() for p in trial.method.trainable_parameters()]
    result = sync_check.count_step_syncs(trial, steps=2)
    assert result == {"device": "cpu", "steps": 2, "checked": False}
    assert trial.teacher.calls == (2 + 2 + 4) * 8  # the three epochs ran their steps
    assert any(not torch.equal(a, b) for a, b in zip(before, trial.method.trainable_parameters()))
    with sync_check.recording_syncs(torch.device("cpu")) as sites:
        assert sites is None
