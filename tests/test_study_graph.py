"""Stages as a dependency graph: independent stages of one study train at the same time on the shared Ray,
end with the same trials and metrics as ``scheduling: sequential``, and a driver killed with SIGKILL while two
stages were training resumes to exactly those metrics. The final stage reuses its search's ``seeds[0]`` trial.

Real Ray Tune, Optuna and training: a resnet8 teacher trained in the study (1 epoch), ce and kd searched with 2
Optuna trials each and re-run on seeds 0 and 1, 2 epochs on 256 digits images.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from test_study_resume import REPO, _end_marked, _env, _epoch_logs, _marked_pids

from study.layout import load_manifest, read_results
from study.runner import run_study, study_outcome
from study.spec import validate
from study.state import trial_rows

pytestmark = [pytest.mark.ray, pytest.mark.slow]
EPOCHS = 2
COMPARED = ("train/loss", "val/top1", "test/top1")


def _spec(tmp_path: Path, name: str, **over) -> dict:
    return {
        "name": name,
        "storage_path": str(tmp_path),
        "teacher": {"train": True, "epochs": 1, "config": {"batch_size": 64, "train_subset": 256}},
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["ce", "kd"],
        "config": {"epochs": EPOCHS, "batch_size": 64, "train_subset": 256},
        "seeds": [0, 1],
        "search": {"trials": 2, "seed": 0},
        "resources": {"cpu": 1},
        "ray": {"num_cpus": 2},
        **over,
    }


def _metrics(study_dir: Path) -> dict[tuple, list[tuple]]:
    """Every trial by (stage, config without the study's own paths) -> its reported metrics per epoch."""
    out = {}
    for row in trial_rows(study_dir):
        config = {k: v for k, v in row["params"].items() if not str(v).startswith(str(study_dir))}
        config = json.dumps(config, sort_keys=True)
        key = (row["stage"], config)
        assert key not in out
        out[key] = [tuple(r.get(k) for k in ("epoch", *COMPARED)) for r in read_results(row["dir"])]
    return out


def _intervals(study_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Stage -> each trial's (start, end): its first epoch's start and its last epoch's report (worker clocks)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for row in trial_rows(study_dir):
        log = [json.loads(x) for x in (Path(row["dir"]) / "epoch_log.jsonl").read_text().splitlines() if x]
        first = read_results(row["dir"])[0]
        out.setdefault(row["stage"], []).append((log[0]["time"] - first["time/epoch_s"], log[-1]["time"]))
    return out


def _overlapping(intervals: dict[str, list[tuple[float, float]]]) -> set[frozenset[str]]:
    pairs = set()
    for a, spans in intervals.items():
        for b, others in intervals.items():
            if a < b and any(s < e2 and s2 < e for s, e in spans for s2, e2 in others):
                pairs.add(frozenset((a, b)))
    return pairs


@pytest.fixture(scope="module")
def concurrent(ray_session, tmp_path_factory):
    return run_study(validate(_spec(tmp_path_factory.mktemp("graph"), "together")), verbose=0, report=False)


@pytest.fixture(scope="module")
def both_orders(concurrent, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    sequential = run_study(validate(_spec(tmp, "inorder", scheduling="sequential")), verbose=0, report=False)
    return concurrent, sequential


def test_independent_stages_train_at_the_same_time_with_the_sequential_metrics(both_orders):
    concurrent, sequential = both_orders
    for study_dir in both_orders:
        assert not study_outcome(study_dir).failed
        assert all(s["status"] == "done" for s in load_manifest(study_dir)["stages"])
    together = _overlapping(_intervals(concurrent))
    dependent = {frozenset(p) for p in (("teachers", "search-kd"), ("teachers", "final-kd"),
                                        ("search-ce", "final-ce"), ("search-kd", "final-kd"))}
    assert together, "no two stages trained at the same time"
    assert not together & dependent, together  # a stage never overlaps what it waits for
    assert not _overlapping(_intervals(sequential))  # today's order: one stage at a time
    assert _metrics(concurrent) == _metrics(sequential)  # same trials, same numbers


def test_the_final_stage_reuses_the_search_trial_of_seed_0(concurrent):
    stages = {s["name"]: s for s in load_manifest(concurrent)["stages"]}
    for method in ("ce", "kd"):
        search, final = stages[f"search-{method}"], stages[f"final-{method}"]
        assert final["reused"] == {"stage": f"search-{method}", "trial": search["best_trial"]}
        rows = [r for r in trial_rows(concurrent) if r["stage"] == f"final-{method}"]
        assert [r["seed"] for r in rows] == [1] and final["trials"] == 1  # seed 0 is not trained again
        assert {k: v for k, v in rows[0]["params"].items() if k != "seed"} == \
            {k: v for k, v in search["best"].items() if k != "seed"}


def test_the_report_counts_the_reused_trial_once(concurrent):
    from analysis.load import load_study
    from analysis.tables import select

    trials = load_study(concurrent).trials
    for method in ("ce", "kd"):
        own = trials[trials["method"] == method]
        assert len(own) == 3 and own["final_reuse"].sum() == 1  # two search trials (one reused) and seed 1
        assert (own["stage_kind"] == "search").sum() == 2  # the reused trial stays one of the search's
        selection = select(own)
        assert selection is not None and len(selection.trial_ids) == 2  # seeds 0 and 1, each once
        assert sorted(own[own["trial_id"].isin(selection.trial_ids)]["seed"]) == [0, 1]


def _start_until_two_stages_train(tmp_path: Path, name: str, marker: str, **popen) -> tuple:
    """A study driver (a subprocess) and the stages that were mid-trial at once when this returned."""
    spec_path = tmp_path / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(tmp_path, name)))
    driver = subprocess.Popen([sys.executable, "-m", "study", "run", str(spec_path), "--no-report", "--verbose", "0"],
                              cwd=REPO, env=_env(marker, TUNE_GLOBAL_CHECKPOINT_S="1"), **popen)
    deadline = time.time() + 600
    while time.time() < deadline:
        training = _mid_trial_stages(tmp_path / name)
        if len(training) >= 2:
            return driver, training
        assert driver.poll() is None, "the study ended before two stages trained at once"
        time.sleep(0.1)
    pytest.fail("two stages never trained at once")


def _resume_to_the_end(study_dir: Path, marker: str, concurrent: Path, restored: list[str]) -> None:
    """Resume the study; the stages named were restored (not started over) and every metric is the concurrent run's."""
    out = subprocess.run([sys.executable, "-m", "study", "resume", str(study_dir), "--no-report", "--verbose", "0"],
                         cwd=REPO, env=_env(marker, TUNE_GLOBAL_CHECKPOINT_S="1"), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in restored:
        assert f"== {name}: resuming" in out.stdout, out.stdout[-3000:]
    assert all(s["status"] == "done" for s in load_manifest(study_dir)["stages"])
    for stage in load_manifest(study_dir)["stages"]:
        for name, lines in _epoch_logs(study_dir / stage["name"]).items():
            wanted = [1] if stage["kind"] == "teachers" else list(range(1, EPOCHS + 1))
            assert [ln["epoch"] for ln in lines] == wanted, (stage["name"], name)  # every epoch trained once
    assert _metrics(study_dir) == _metrics(concurrent)


def test_a_kill_while_two_stages_train_resumes_to_the_same_metrics(concurrent, tmp_path):
    study_dir = tmp_path / "killed"
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        driver, training = _start_until_two_stages_train(tmp_path, "killed", first, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        _end_marked(first)
        running = [s["name"] for s in load_manifest(study_dir)["stages"] if s["status"] == "running"]
        assert set(training) <= set(running)
        _resume_to_the_end(study_dir, second, concurrent, training)
    finally:
        for marker in (first, second):
            _end_marked(marker)


def test_ctrl_c_while_two_stages_train_stops_both_cleanly_and_resume_finishes_them(concurrent, tmp_path):
    study_dir = tmp_path / "stopped"
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        driver, training = _start_until_two_stages_train(tmp_path, "stopped", first, stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, text=True)
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=180)
        assert driver.returncode == 130, output[-3000:]  # interrupted: resume later
        assert "stopping every running stage" in output and "Traceback" not in output, output[-3000:]
        deadline = time.time() + 30
        while _marked_pids(first) and time.time() < deadline:  # Ray's workers go with the driver
            time.sleep(0.5)
        assert not _marked_pids(first), "processes of the stopped study outlived it"
        stages = {s["name"]: s["status"] for s in load_manifest(study_dir)["stages"]}
        assert all(stages[name] == "interrupted" for name in training), stages  # each stage says where it stopped
        _resume_to_the_end(study_dir, second, concurrent, training)
    finally:
        for marker in (first, second):
            _end_marked(marker)


def _mid_trial_stages(study_dir: Path) -> list[str]:
    """Stages with a trial that trained some but not all of its epochs right now."""
    out = []
    for exp in study_dir.glob("*-*"):
        logs = _epoch_logs(exp)
        if any(0 < len(lines) < EPOCHS for lines in logs.values()):
            out.append(exp.name)
    return out
