"""A study driver killed with SIGKILL mid-study resumes to completion; a study runs on a two-node Ray cluster.

Both run ``python -m study`` as a subprocess (a driver cannot share this test session's ``ray.init``). Every
process they start carries a unique marker in its environment; whatever is left of them afterwards (Ray
agents orphaned by the kill, cluster nodes) is ended by pid.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from study.layout import experiment_trials, load_manifest, read_results

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MARKER = "KDSTUDY_TEST_PROCESS"


def _env(marker: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, MARKER: marker, "OMP_NUM_THREADS": "1", "RAY_AIR_NEW_OUTPUT": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER=marker``: exactly the ones this test started (and children)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _end_marked(marker: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, every process carrying the marker; wait until they are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _marked_pids(marker):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and _marked_pids(marker):
            time.sleep(0.3)
        if not _marked_pids(marker):
            return


def _epoch_logs(exp_dir: Path) -> dict[str, list[dict]]:
    logs = {}
    for path in exp_dir.glob("*/epoch_log.jsonl"):
        logs[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return logs


def _study(cmd: list[str], marker: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study", *cmd], cwd=REPO, env=_env(marker, **env),
                          capture_output=True, text=True, timeout=timeout)


def test_sigkill_of_the_driver_then_resume(tmp_path):
    spec = {
        "name": "killed",
        "storage_path": str(tmp_path),
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["ce"],
        "config": {"epochs": 2, "batch_size": 64, "train_subset": 512},
        "search": {"trials": 3, "seed": 0, "final": False},
        "resources": {"cpu": 1},
        "ray": {"num_cpus": 2},
    }
    spec_path = tmp_path / "killed.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    study_dir = tmp_path / "killed"
    exp_dir = study_dir / "search-ce"
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        driver = subprocess.Popen(
            [sys.executable, "-m", "study", "run", str(spec_path), "--no-report", "--verbose", "0"],
            cwd=REPO, env=_env(first, TUNE_GLOBAL_CHECKPOINT_S="1"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 400
        while time.time() < deadline:
            logs = _epoch_logs(exp_dir)
            if any(len(lines) == 2 for lines in logs.values()):
                break  # a trial trained its last epoch: kill now, others are mid-way or not started
            assert driver.poll() is None, "the study ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished an epoch in time")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        _end_marked(first)  # the killed driver's Ray and trial workers
        before = _epoch_logs(exp_dir)
        assert sum(len(v) for v in before.values()) < 6  # really mid-study

        out = _study(["resume", str(study_dir), "--no-report", "--verbose", "0"], second, timeout=500,
                     TUNE_GLOBAL_CHECKPOINT_S="1")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "== search-ce: resuming" in out.stdout, out.stdout[-3000:]  # restored, not started over
    finally:
        for marker in (first, second):
            _end_marked(marker)

    trials = experiment_trials(exp_dir)
    assert len(trials) == 3 and all(t["status"] == "TERMINATED" for t in trials)  # the trial count is honoured
    after = _epoch_logs(exp_dir)
    assert set(after) == {t["dir"].name for t in trials}
    assert not list(study_dir.glob(".search-ce.abandoned-*"))
    finished_before = [name for name, lines in before.items() if len(lines) == 2]
    assert finished_before and set(finished_before) <= set(after)
    for name, lines in after.items():
        assert [ln["epoch"] for ln in lines] == [1, 2], (name, lines)  # every epoch trained exactly once
        if len(before.get(name, [])) == 2:
            assert lines == before[name]  # finished before the kill: not rerun
        assert [r["epoch"] for r in read_results(exp_dir / name)] == [1, 2]
        raw = [json.loads(x) for x in (exp_dir / name / "result.json").read_text().splitlines() if x]
        assert [r["epoch"] for r in raw if r["epoch"] == 1] == [1]
        # the final epoch may be re-reported once after the kill, never retrained: identical metrics
        finals = {(r["train/loss"], r["time/epoch_s"], r["val/top1"]) for r in raw if r["epoch"] == 2}
        assert len(finals) == 1
    assert load_manifest(study_dir)["stages"][0]["status"] == "done"
    study = optuna.load_study(study_name="killed/search-ce", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert optuna.trial.TrialState.RUNNING not in states
    # the searcher kept its history: the paper defaults were evaluated exactly once
    defaults = [t for t in study.trials if t.params == {"lr": 0.05, "weight_decay": 5e-4}]
    assert len([t for t in defaults if t.state == optuna.trial.TrialState.COMPLETE]) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_teacher_and_a_distillation_study_on_a_two_node_cluster(tmp_path):
    """Two one-CPU nodes (the README's recipe, token authentication): the teacher trial fits on one node."""
    marker = uuid.uuid4().hex
    port = _free_port()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp_dir = f"/tmp/kdr{marker[:8]}"
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    nodes: list[subprocess.Popen] = []
    spec = {
        "name": "cluster",
        "storage_path": str(tmp_path),
        "teacher": {"train": True, "epochs": 1},
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["kd"],
        "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
        "seeds": [0, 1],
        "resources": {"cpu": 1},
    }
    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    try:
        head = [ray_bin, "start", "--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard=false"]
        nodes.append(subprocess.Popen(head + common, env=_env(marker, **token), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        address = f"127.0.0.1:{port}"
        probe = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); print(len(ray.nodes()))"
        deadline = time.time() + 120
        worker_started = False
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", probe, address], env=_env(marker, **token),
                                 capture_output=True, text=True, timeout=120)
            if out.returncode == 0 and not worker_started:
                nodes.append(subprocess.Popen([ray_bin, "start", "--address", address, *common],
                                              env=_env(marker, **token), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
                worker_started = True
            elif out.returncode == 0 and out.stdout.strip().endswith("2"):
                break
            time.sleep(2)
        else:
            pytest.fail("the two-node cluster did not come up")

        out = _study(["run", str(spec_path), "--address", address, "--verbose", "1"], marker, timeout=600,
                     KDSTUDY_PENDING_WARNING_S="60", KDSTUDY_PROGRESS_S="3", **token)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # the study saw both nodes' CPUs: the progress line's "slots n/2 CPU" (Ray's table: "n/2 CPUs")
        assert "/2 CPU" in out.stdout, out.stdout[-3000:]
        assert "has waited" not in out.stdout  # no trial asked for more than a node has
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
        _end_marked(marker)
        subprocess.run(["rm", "-rf", temp_dir], check=False)

    study_dir = tmp_path / "cluster"
    manifest = load_manifest(study_dir)
    assert [(s["name"], s["status"]) for s in manifest["stages"]] == [("teachers", "done"), ("grid-kd", "done")]
    assert Path(manifest["teachers"]["resnet8"]["checkpoint"]).is_file()
    (teacher,) = experiment_trials(study_dir / "teachers")
    assert teacher["status"] == "TERMINATED"
    trials = experiment_trials(study_dir / "grid-kd")
    assert len(trials) == 2 and all(t["status"] == "TERMINATED" for t in trials)
    params = [json.loads((t["dir"] / "params.json").read_text()) for t in trials]
    assert sorted(p["seed"] for p in params) == [0, 1]
    assert {p["teacher_checkpoint"] for p in params} == {manifest["teachers"]["resnet8"]["checkpoint"]}
    for t in trials:
        assert [r["epoch"] for r in read_results(t["dir"])] == [1]
    assert f"report: {study_dir}" in out.stdout and (study_dir / "report.md").is_file()


def _lock_holder(study_dir: Path) -> str:
    path = study_dir / ".lock"
    return path.read_text().strip() if path.is_file() else ""


def test_a_second_driver_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, capsys):
    """Two drivers on one study dir: the second refuses with one line; a SIGKILLed holder blocks nobody."""
    from study.__main__ import main
    from study.runner import init_study
    from study.spec import validate

    spec = validate({
        "name": "locked",
        "storage_path": str(tmp_path),
        "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
        "methods": ["ce"],
        "config": {"epochs": 1, "batch_size": 64, "train_subset": 256},
        "resources": {"cpu": 1},
        "ray": {"num_cpus": 1},
    })
    study_dir = tmp_path / "locked"
    init_study(spec, study_dir)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        holder = subprocess.Popen([sys.executable, "-m", "study", "resume", str(study_dir), "--no-report"],
                                  cwd=REPO, env=_env(first), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not _lock_holder(study_dir).startswith(f"pid {holder.pid} on "):  # written once the lock is held
            assert holder.poll() is None and time.time() < deadline, "the first driver never took the lock"
            time.sleep(0.1)
        capsys.readouterr()
        assert main(["resume", str(study_dir), "--no-report"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another `python -m study` (pid {holder.pid} on " in err[0], err
        assert holder.poll() is None  # the refusal left the first driver alone

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        _end_marked(first)
        assert _lock_holder(study_dir).startswith(f"pid {holder.pid} ")  # the file stays; the kernel dropped the lock
        out = _study(["resume", str(study_dir), "--no-report", "--verbose", "0"], second, timeout=400)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]  # every trial finished
    finally:
        for marker in (first, second):
            _end_marked(marker)
    (trial,) = experiment_trials(study_dir / "grid-ce")
    assert trial["status"] == "TERMINATED"
    assert load_manifest(study_dir)["stages"][0]["status"] == "done"
