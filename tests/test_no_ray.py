"""The GPU machine has PyTorch but no Ray and no Optuna: what the GPU check runs must work without them.

Each test runs a real subprocess in which ``import ray`` and ``import optuna`` raise ImportError (a
``sitecustomize`` on PYTHONPATH installs an import blocker, inherited by every process it spawns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "optuna")
BLOCKER = f'''
import importlib.abc
import sys

BLOCKED = {BLOCKED!r}


class NoRayNoOptuna(importlib.abc.MetaPathFinder):
    """Refuse the packages the GPU machine does not have, as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {{name!r}} (blocked: the GPU machine has no Ray/Optuna)")
        return None


sys.meta_path.insert(0, NoRayNoOptuna())
'''

TINY_BENCH = ["--student", "resnet8", "--teacher", "resnet8", "--steps", "2", "--warmup", "1", "--batch-size", "8",
              "--classes", "10", "--workers", "1", "--device", "cpu", "--json"]


@pytest.fixture(scope="module")
def no_ray_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("no_ray_site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_blocker_really_blocks(no_ray_env):
    probe = run(["-c", "import ray"], no_ray_env)
    assert probe.returncode == 1 and "blocked" in probe.stderr
    probe = run(["-c", "import optuna.samplers"], no_ray_env)
    assert probe.returncode == 1 and "blocked" in probe.stderr


def test_a_trial_runs_without_ray_and_optuna(no_ray_env, tmp_path):
    out = tmp_path / "run"
    done = run(["-m", "trainables", "method=kd", "student=resnet8", "teacher=resnet8", "dataset=digits",
                "train_subset=64", "epochs=1", "batch_size=32", "device=cpu", "seed=0",
                f"teacher_checkpoint={_teacher(tmp_path)}", "--out", str(out)], no_ray_env)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(done.stdout)
    assert final["epoch"] == 1 and final["teacher_calls"] == 64
    lines = (out / "progress.jsonl").read_text().splitlines()
    assert len(lines) == 1 and (out / "checkpoint").is_dir()


def test_the_benchmark_runs_without_ray_and_optuna(no_ray_env):
    done = run(["-m", "benchmarks", *TINY_BENCH, "--threads", "1"], no_ray_env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["platform"]["steps"] == 2 and result["reference"]["steps"] == 2 and result["ratio"] > 0


def test_the_ray_pack_backend_says_ray_is_missing(no_ray_env):
    done = run(["-m", "benchmarks", *TINY_BENCH, "--pack", "2"], no_ray_env)
    assert done.returncode == 2 and "--pack-backend processes" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_the_process_pack_backend_runs_without_ray_on_overlapping_windows(no_ray_env):
    n = 2
    done = run(["-m", "benchmarks", *TINY_BENCH, "--pack", str(n), "--pack-backend", "processes"], no_ray_env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["mode"] == "pack" and result["backend"] == "processes" and result["trials"] == n
    assert result["gpu"] is False and result["cpus"] >= 1
    for loop in ("platform", "reference"):
        single, packed = result[loop]["single"], result[loop]["packed"]
        assert single["trials"] == 1 and packed["trials"] == n and len(packed["per_trial_img_s"]) == n
        assert packed["cpu_per_trial"] == max(1, int(result["cpus"]) // n)
        assert packed["gpu_per_trial"] == 0 and packed["gpu_memory_fraction"] is None  # no GPU: no cap
        starts, ends = zip(*packed["windows"])
        assert max(starts) < min(ends)  # every trial was timing while every other one was: a common window
        assert packed["window_s"] >= max(ends) - min(starts) - 1e-9 and packed["window_s"] > 0
        images = 2 * 8 * n  # each trial timed its 2 steps of 8 images
        assert packed["img_s"] == pytest.approx(images / packed["window_s"])
        assert result[loop]["packing_gain"] == pytest.approx(packed["img_s"] / single["img_s"])
    assert result["ratio_packed"] == pytest.approx(result["platform"]["packed"]["img_s"]
                                                   / result["reference"]["packed"]["img_s"])


def test_gpu_tests_are_collected_without_ray_and_optuna(no_ray_env):
    done = run(["-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
               no_ray_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert len(collected) >= 4, done.stdout


def _teacher(tmp_path: Path) -> str:
    import torch

    from trainables import models

    torch.manual_seed(0)
    path = tmp_path / "resnet8.pt"
    torch.save({"model": models.create("resnet8", num_classes=10).state_dict()}, path)
    return str(path)
