"""Studies end to end on the shared local Ray (2 CPUs): an Optuna search of two methods, a grid with a teacher
trained inside the study, failures, resuming from a stale snapshot. Real Ray Tune, real Optuna (SQLite), real
training on digits (1-2 epochs, resnet8, 256 training images).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from ray.tune import Callback

from analysis.load import load_study
from study import ray_compat
from study.__main__ import main
from study.layout import experiment_trials, load_manifest, read_results, save_manifest
from study.runner import run_study
from study.spaces import available_knobs
from study.spec import validate
from study.state import status_table, trial_rows
from trainables.config import allowed_keys
from trainables.methods import get_method

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def search_study(ray_session, digits_teacher, tmp_path_factory):
    """ce and kd, 2 Optuna trials each (paper defaults first), then the best config re-run (1 seed)."""
    storage = tmp_path_factory.mktemp("studies")
    spec = validate(
        {
            "name": "search2",
            "storage_path": str(storage),
            "teacher": {"train": False, "checkpoints": {digits_teacher["arch"]: digits_teacher["checkpoint"]}},
            "pairs": [{"teacher": digits_teacher["arch"], "student": "resnet8"}],
            "methods": ["ce", "kd"],
            "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
            "seeds": [0],
            "search": {"trials": 2, "seed": 0},
            "resources": {"cpu": 1},
        }
    )
    study_dir = run_study(spec, verbose=0, report=False)
    return spec, study_dir


def _search_trials(study_dir: Path, stage: str) -> list[dict]:
    return [r for r in trial_rows(study_dir) if r["stage"] == stage]


def test_search_study_respects_each_method_space(search_study):
    spec, study_dir = search_study
    manifest = load_manifest(study_dir)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert list(stages) == ["search-ce", "final-ce", "search-kd", "final-kd"]
    assert all(s["status"] == "done" for s in stages.values())
    assert [stages[n]["trials"] for n in stages] == [2, 0, 2, 0]  # seeds [0]: the final reuses the search's trial
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    for method in ("ce", "kd"):
        knobs = available_knobs(method, allowed_keys(get_method(method).defaults))
        base = spec.method_space(method, spec.pairs[0]).base
        rows = _search_trials(study_dir, f"search-{method}")
        assert len(rows) == 2 and all(r["state"] == "TERMINATED" for r in rows)
        for row in rows:
            params = row["params"]
            searched = {k for k in params if k in knobs}
            assert searched == set(knobs)  # every knob of the method, nothing else
            for key in searched:
                assert knobs[key].dist.contains(params[key]), (key, params[key])
            # everything else is the fixed config
            fixed = {k: v for k, v in params.items() if k not in knobs}
            assert fixed == {**spec.pair_config(method, spec.pairs[0]), "seed": 0}
            assert [r["epoch"] for r in read_results(row["dir"])] == [1]
        if method == "ce":
            assert not any("temperature" in r["params"] for r in rows)
        # Optuna: its own study in the study's SQLite file, the paper defaults first, values = Tune's results
        study = optuna.load_study(study_name=f"search2/search-{method}", storage=storage)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 2 and len(study.trials) == 2
        assert done[0].params == {k: base[k] for k in knobs}
        values = sorted(r["last val/top1"] for r in rows)
        assert sorted(t.value for t in done) == pytest.approx(values)
        # the final stage's seeds[0] run is the search trial of the best config: not trained again
        best = stages[f"search-{method}"]["best"]
        assert best["method"] == method
        assert _search_trials(study_dir, f"final-{method}") == []
        assert stages[f"final-{method}"]["reused"] == {"stage": f"search-{method}",
                                                       "trial": stages[f"search-{method}"]["best_trial"]}
        assert stages[f"search-{method}"]["best_value"] == max(values)


def test_status_reads_the_study_dir_without_ray(search_study, capsys):
    _, study_dir = search_study
    table = status_table(study_dir)
    assert table.count("TERMINATED") == 4
    assert "temperature" in table and "[final-kd]" in table
    assert main(["status", str(study_dir)]) == 0
    assert "search-kd" in capsys.readouterr().out
    assert main(["status", str(study_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {r["method"] for r in rows} == {"ce", "kd"}


def test_grid_study_with_a_teacher_trained_first(ray_session, tmp_path, capsys):
    """Also per-pair settings: resnet8-resnet14's own DKD beta over the study-wide one, and resnet8-resnet8's own
    KD weight beside the temperature grid (the other pair trains on KD's default weight)."""
    pairs = [{"teacher": "resnet8", "student": "resnet8", "method_config": {"kd": {"kd_weight": 0.5}}},
             {"teacher": "resnet8", "student": "resnet14", "method_config": {"dkd": {"dkd_beta": 2.0}}}]
    spec = validate(
        {
            "name": "grid",
            "storage_path": str(tmp_path),
            "teacher": {"train": True, "epochs": 1},
            "pairs": pairs,
            "methods": ["kd", "dkd"],
            "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
            "method_config": {"dkd": {"dkd_beta": 6.0}},
            "grid": {"kd": {"temperature": [2.0, 4.0]}},
            "seeds": [0],
            "resources": {"cpu": 1},
        }
    )
    study_dir = run_study(spec, verbose=0, report=False)
    manifest = load_manifest(study_dir)
    assert [(s["name"], s["status"]) for s in manifest["stages"]] == [("teachers", "done"), ("grid-kd", "done"),
                                                                       ("grid-dkd", "done")]
    teacher = manifest["teachers"]["resnet8"]
    assert Path(teacher["checkpoint"]).is_file() and teacher["checkpoint"].startswith(str(study_dir))
    trials = experiment_trials(study_dir / "grid-kd")
    assert len(trials) == 4 and all(t["status"] == "TERMINATED" for t in trials)
    params = [json.loads((t["dir"] / "params.json").read_text()) for t in trials]
    combos = {(p["pair"], p["temperature"], p["kd_weight"]) for p in params}
    assert combos == {(pair, temp, weight) for pair, weight in (("resnet8-resnet8", 0.5), ("resnet8-resnet14", 0.9))
                      for temp in (2.0, 4.0)}
    for p in params:
        assert p["pair"] == f"{p['teacher']}-{p['student']}"
        assert p["teacher_checkpoint"] == teacher["checkpoint"]
    dkd = {r["params"]["pair"]: r for r in trial_rows(study_dir, stages=["grid-dkd"])}
    assert {pair: r["params"]["dkd_beta"] for pair, r in dkd.items()} == {"resnet8-resnet8": 6.0,
                                                                         "resnet8-resnet14": 2.0}
    assert all(r["state"] == "TERMINATED" for r in dkd.values())
    out = capsys.readouterr().out
    assert "grid-kd [pair=resnet8-resnet14, kd_weight=0.9, temperature=4]" in out
    assert "grid-dkd [pair=resnet8-resnet14, dkd_beta=2]" in out
    # the report's cells: one method on one pair each, with that pair's own configuration
    from analysis.tables import best_per_method

    frame = best_per_method(load_study(study_dir)).frame.set_index(["method", "pair"])
    chosen = {pair: json.loads(cfg)["dkd_beta"] for (m, pair), cfg in frame["selected_config"].items() if m == "dkd"}
    assert sorted(chosen.values()) == [2.0, 6.0] and frame.loc["dkd"]["configs compared"].tolist() == [1, 1]


def test_state_files_cut_by_a_crash_come_back_from_the_backup(search_study, tmp_path):
    from study.tuner import BACKUP, recover_state, state_readable

    _, study_dir = search_study
    exp = tmp_path / "search-kd"
    shutil.copytree(study_dir / "search-kd", exp)
    assert state_readable(exp) and state_readable(exp / BACKUP)
    searcher = next(exp.glob("searcher-state-*.pkl"))
    searcher.write_bytes(searcher.read_bytes()[:20])  # what a kill -9 during Tune's copy leaves
    assert not state_readable(exp)
    assert recover_state(exp) == "recovered"
    assert state_readable(exp)
    shutil.rmtree(exp / BACKUP)
    next(exp.glob("experiment_state-*.json")).write_text("{")
    assert recover_state(exp) == "lost"


def test_a_failing_trial_is_marked_and_the_study_goes_on(ray_session, tmp_path, capsys):
    spec = validate(
        {
            "name": "failing",
            "storage_path": str(tmp_path),
            "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
            "methods": ["ce"],
            "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
            "grid": {"ce": {"lr": [0.05, 1.0e12]}},
            "max_failures": 0,
            "resources": {"cpu": 1, "gpu": 0.5},  # no GPU here: falls back to CPU with a warning
        }
    )
    if ray_session.cluster_resources().get("GPU", 0):
        study_dir = run_study(spec, verbose=0, report=False)
    else:
        with pytest.warns(UserWarning, match="no GPU"):
            study_dir = run_study(spec, verbose=0, report=False)
    rows = {r["params"]["lr"]: r for r in trial_rows(study_dir)}
    assert rows[0.05]["state"] == "TERMINATED"
    assert rows[1.0e12]["state"] == "ERROR" and "non-finite loss" in rows[1.0e12]["error"]
    stage = load_manifest(study_dir)["stages"][0]
    assert stage["status"] == "done" and stage["errored"] == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "non-finite" in out and "1 errored" in out


class SnapshotAfterFirstEpoch(Callback):
    """Copies the experiment's state files as they stand right after epoch 1's result (or its checkpoint)."""

    def __init__(self, dest: str, on: str) -> None:
        self.dest, self.on = dest, on
        self.armed = self.taken = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.armed = self.armed or (self.on == "result" and result.get("epoch") == 1)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.armed = self.armed or self.on == "checkpoint"

    def on_step_end(self, iteration, trials, **info):
        if self.armed and not self.taken and trials:
            staging, _ = ray_compat.experiment_paths(trials[0])
            Path(self.dest).mkdir(parents=True, exist_ok=True)
            for pattern in ("*.json", "*.pkl"):
                for path in staging.glob(pattern):
                    shutil.copy2(path, Path(self.dest) / path.name)
            self.taken = True


@pytest.mark.parametrize("snapshot_at", ["result", "checkpoint"])
def test_resume_from_a_stale_snapshot_trains_no_epoch_twice(snapshot_at, ray_session, tmp_path, monkeypatch):
    """The driver 'died' after epoch 2 was checkpointed to disk but before Tune snapshotted or logged it.

    ``result``: the last snapshot has epoch 1's result but not its checkpoint (Tune restarts the trial's
    logs); ``checkpoint``: it has epoch 1's checkpoint (Tune restores the logs). Either way the trial must
    continue from the epoch-2 checkpoint on disk, train nothing again, and log each epoch once.
    """
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # snapshot every controller step
    spec = validate(
        {
            "name": "stale",
            "storage_path": str(tmp_path),
            "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
            "methods": ["ce"],
            "config": {"epochs": 2, "batch_size": 64, "train_subset": 256},
            "resources": {"cpu": 1},
            "ray": {"num_cpus": 1},
        }
    )
    snapshot = tmp_path / "snapshot"
    callback = SnapshotAfterFirstEpoch(str(snapshot), snapshot_at)
    study_dir = run_study(spec, verbose=0, report=False, callbacks=[callback])
    exp = study_dir / "grid-ce"
    (trial,) = experiment_trials(exp)
    log_before = (trial["dir"] / "epoch_log.jsonl").read_text()
    lines = (trial["dir"] / "result.json").read_text().splitlines()
    original = [json.loads(x) for x in lines]
    assert [r["epoch"] for r in original] == [1, 2]
    # roll the experiment back to the epoch-1 snapshot; the epoch-2 checkpoint stays on disk
    for path in [*exp.glob("*.json"), *exp.glob("*.pkl")]:
        if path.name != "tuner.pkl":
            path.unlink()
    for path in snapshot.iterdir():
        shutil.copy2(path, exp / path.name)
    shutil.rmtree(exp / ".state-backup")
    (trial["dir"] / "result.json").write_text(lines[0] + "\n")
    assert [t["status"] for t in experiment_trials(exp)] != ["TERMINATED"]
    manifest = load_manifest(study_dir)
    manifest["stages"][0]["status"] = "running"
    save_manifest(study_dir, manifest)

    # a new driver (a new Ray session, as after a real crash); it unpickles this module's callback
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    out = subprocess.run([sys.executable, "-m", "study", "resume", str(study_dir), "--no-report", "--verbose", "0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert [t["status"] for t in experiment_trials(exp)] == ["TERMINATED"]
    assert (trial["dir"] / "epoch_log.jsonl").read_text() == log_before  # nothing trained again
    replayed = [json.loads(x) for x in (trial["dir"] / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in replayed] == [1, 2]
    for i in (0, 1):
        for key in ("train/loss", "val/top1", "time/epoch_s"):
            assert replayed[i][key] == original[i][key]


@pytest.mark.parametrize(("lrs", "expected"), [
    ([0.05, 1.0e12], "1 of 2 trial(s) errored (first: grid-ce/"),
    ([1.0e12], "1 of 1 trial(s) errored (first: grid-ce/"),
])
def test_run_exits_1_unless_every_trial_finished_and_prints_the_tensorboard_command(ray_session, tmp_path, capsys,
                                                                                    lrs, expected):
    from study.console import RAY_TENSORBOARD_HINT

    spec = {
        "name": "exits",
        "storage_path": str(tmp_path),
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["ce"],
        "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
        "grid": {"ce": {"lr": lrs}},
        "max_failures": 0,
        "resources": {"cpu": 1},
    }
    path = tmp_path / "exits.yaml"
    path.write_text(json.dumps(spec))
    study_dir = tmp_path / "exits"
    assert main(["run", str(path), "--no-report", "--verbose", "1"]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("study: error:")]
    assert len(errors) == 1, err
    assert expected in errors[0] and "non-finite loss" in errors[0]  # the first error's own message
    assert ("no finished trial in stage(s) grid-ce" in errors[0]) == (len(lrs) == 1)
    assert errors[0].endswith(f"see `python -m study status {study_dir}`")
    # Ray's hint names a temporary folder of its session; the study prints the study dir once instead
    assert RAY_TENSORBOARD_HINT not in out, out
    assert out.count("tensorboard --logdir") == 1
    assert f"TensorBoard: tensorboard --logdir {study_dir}\n" in out
    assert list(study_dir.glob("grid-ce/*/events.out.tfevents.*"))  # the event files it points at
