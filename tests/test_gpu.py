"""The CUDA paths, for real, on a GPU (``pytest -m gpu``; ``benchmarks/gpu_check.sh`` runs them).

Skipped without CUDA. ``KDSTUDY_GPU_TEST_DEVICE=cpu`` runs the same tests on the CPU (bf16 autocast,
channels_last and foreach SGD there; the GPU-only checks still skip): the GPU check's ``--cpu-smoke``
uses it so that these tests have run at least once before a GPU machine is at hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import models
from trainables.checkpoint import load_state
from trainables.data import TensorSplit
from trainables.loop import build_trial, evaluate, train, train_one_epoch
from trainables.reporting import RunDirReporter

DEVICE = os.environ.get("KDSTUDY_GPU_TEST_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs CUDA (or KDSTUDY_GPU_TEST_DEVICE=cpu)"),
]
gpu_only = pytest.mark.skipif(not (ON_GPU and torch.cuda.is_available()), reason="a CUDA-only property")

CLASSES = 10
SPEED_KEYS = {"device": DEVICE, "amp": "bf16", "channels_last": True}
"""What every trial here runs with: the GPU defaults, written out (``auto`` would hide a wrong guess)."""

# One method per family (README "Methods"), each a different training step.
FAMILIES = {
    "ce": {},  # the student alone
    "kd": {},  # logit distillation
    "dkd": {"warmup_epochs": 1},
    "fitnet": {},  # feature hint through a connector
    "offline": {},  # trajectory family, final teacher
    "online": {},  # trajectory family, switching checkpoints
    "ckd": {"teacher_budget": 128, "train_subset": 128},  # comparative KD on a teacher-call budget
    "ijckd": {},  # softmax-regression family
    "srrl": {},
    "simkd": {},
    "teacher_head": {},
}


def _synthetic(**extra) -> dict:
    return {"dataset": "synthetic", "synthetic_size": 256, "synthetic_classes": CLASSES, "batch_size": 32,
            "seed": 0, **SPEED_KEYS, **extra}


@pytest.fixture(scope="module")
def gpu_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A resnet20 teacher trained on the device for 2 epochs, with its checkpoint trajectory (for ``online``)."""
    workdir = tmp_path_factory.mktemp("gpu_teacher")
    metrics = train({"method": "teacher", "teacher": "resnet20", "epochs": 2, **_synthetic()}, workdir=workdir)
    assert np.isfinite(metrics["train/loss"])
    return {"arch": "resnet20", "checkpoint": str(workdir / "trajectory" / "final.pt")}


def _student_cfg(teacher: dict, method: str, **extra) -> dict:
    return {"method": method, "student": "resnet8", "teacher": teacher["arch"],
            "teacher_checkpoint": teacher["checkpoint"], **_synthetic(), **FAMILIES.get(method, {}), **extra}


@pytest.mark.parametrize("method", list(FAMILIES))
def test_each_method_family_trains_with_the_gpu_settings(gpu_teacher, tmp_path, method):
    trial = build_trial(_student_cfg(gpu_teacher, method), workdir=tmp_path)
    assert trial.device.type == torch.device(DEVICE).type and trial.amp_dtype == torch.bfloat16
    group = trial.optimizer.param_groups[0]
    assert group["fused"] is True if ON_GPU else group["foreach"] is True
    student = trial.method.student
    assert all(p.device.type == trial.device.type for p in trial.method.trainable_parameters())
    assert student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen = {}

    def record(module, inputs, output):  # returns None: the output is left as it is
        seen.setdefault("student", output.dtype)

    student.conv1.register_forward_hook(record)  # every method runs the student's stem
    before = [p.detach().clone() for p in trial.method.trainable_parameters()]
    metrics = train_one_epoch(trial, 0)
    assert seen["student"] == torch.bfloat16  # autocast really ran on the device
    losses = {k: v for k, v in metrics.items() if k.startswith("train/loss")}
    assert losses and all(np.isfinite(v) for v in losses.values()), losses
    assert all(p.dtype == torch.float32 for p in trial.method.trainable_parameters())  # fp32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, trial.method.trainable_parameters()))
    acc = evaluate(trial.method, trial.data.val, 256, trial.device, trial.amp_dtype)
    assert 0.0 <= acc["top1"] <= 100.0


class StopAfter(RunDirReporter):
    """A reporter that interrupts the trial after ``k`` epochs, as a killed worker would."""

    def __init__(self, run_dir: Path, k: int) -> None:
        super().__init__(run_dir)
        self.k = k

    def __call__(self, metrics, checkpoint_dir):
        super().__call__(metrics, checkpoint_dir)
        if len(self.history) >= self.k:
            raise KeyboardInterrupt


def _max_diff(a: dict, b: dict) -> float:
    return max(float((x.float() - b[k].float()).abs().max()) for k, x in a.items() if x.is_floating_point())


def test_resume_is_exact_on_the_device(gpu_teacher, tmp_path):
    cfg = _student_cfg(gpu_teacher, "kd", epochs=3)
    straight = RunDirReporter(tmp_path / "straight")
    train(cfg, reporter=straight, workdir=tmp_path / "straight")
    broken = StopAfter(tmp_path / "broken", k=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=broken, workdir=tmp_path / "broken")
    resumed = RunDirReporter(tmp_path / "broken")
    train(cfg, reporter=resumed, resume_from=broken.checkpoint_dir, workdir=tmp_path / "broken")
    a, b = load_state(straight.checkpoint_dir), load_state(resumed.checkpoint_dir)
    assert a["epoch"] == b["epoch"] == 3 and [m["epoch"] for m in resumed.history] == [3]
    if any(not torch.equal(v, b["method"][k]) for k, v in a["method"].items()):
        again = RunDirReporter(tmp_path / "again")
        train(cfg, reporter=again, workdir=tmp_path / "again")
        c = load_state(again.checkpoint_dir)
        resumed_diff, rerun_diff = _max_diff(a["method"], b["method"]), _max_diff(a["method"], c["method"])
        pytest.fail(
            f"resumed weights differ from the uninterrupted run (max |diff| {resumed_diff:.3g}); "
            f"two uninterrupted runs differ by {rerun_diff:.3g} "
            "(non-zero: the device is not deterministic with these settings, so resume cannot be exact)"
        )
    assert straight.history[-1]["val/top1"] == resumed.history[-1]["val/top1"]
    assert straight.history[-1]["train/loss"] == resumed.history[-1]["train/loss"]


CAP_PROBE = """
import json, sys, torch
from trainables.device import memory_fraction
from trainables.loop import build_trial
cfg = json.loads(sys.argv[1])
fraction = memory_fraction({}, 0.25)  # what a trial at gpu 0.25 (Ray or the processes pack backend) takes
trial = build_trial({**cfg, "gpu_memory_fraction": fraction})
total = torch.cuda.get_device_properties(trial.device).total_memory
free = torch.cuda.mem_get_info(trial.device)[0]
inside = torch.empty(int(0.5 * fraction * total), dtype=torch.uint8, device=trial.device)
past = int(1.1 * fraction * total) - torch.cuda.memory_allocated(trial.device)
try:
    torch.empty(past, dtype=torch.uint8, device=trial.device)
    outcome = "allocated"
except torch.OutOfMemoryError as err:
    outcome = "oom: " + str(err).splitlines()[0]
print(json.dumps({"fraction": fraction, "total": total, "free": free, "past": past, "outcome": outcome,
                  "peak": torch.cuda.max_memory_allocated(trial.device)}))
"""


@gpu_only
def test_the_memory_cap_of_a_fractional_trial_holds(tmp_path):
    # A process of its own: the cap is per process and would stay on for the other tests.
    cfg = {"method": "ce", "student": "resnet8", **_synthetic()}
    done = subprocess.run([sys.executable, "-c", CAP_PROBE, json.dumps(cfg)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe["fraction"] == pytest.approx(0.25 * 0.95)
    assert probe["free"] > probe["past"] + probe["peak"]  # the card had room: only the cap can refuse it
    assert probe["outcome"].startswith("oom"), probe
    assert probe["peak"] <= probe["fraction"] * probe["total"]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_device_pipeline_gives_the_cpu_images(memory_format):
    n = 300
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (n,), generator=torch.Generator().manual_seed(1))
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    splits = {}
    for where in ("cpu", DEVICE):
        split = TensorSplit(images.clone(), labels.clone(), mean, std).to(where)
        split.memory_format = memory_format
        splits[where] = list(split.batches(64, shuffle=True, augment=True, generator=torch.Generator().manual_seed(7)))
    cpu, dev = splits["cpu"], splits[DEVICE]
    assert len(cpu) == len(dev) == 5 and dev[0].x.device.type == torch.device(DEVICE).type
    for a, b in zip(cpu, dev):
        assert b.x.is_contiguous(memory_format=memory_format)
        assert torch.equal(a.index, b.index.cpu()) and torch.equal(a.y, b.y.cpu())
        assert torch.equal(a.x, b.x.cpu())  # bit for bit: same crops, flips and normalisation arithmetic


@gpu_only
def test_the_sync_check_sees_a_planted_host_sync():
    from benchmarks.sync_check import recording_syncs

    x = torch.ones(4, device=DEVICE)
    with recording_syncs(x.device) as sites:
        y = (x * 2).sum()  # no sync: stays on the device
    assert sites == []
    with recording_syncs(x.device) as sites:
        y.item()  # a device-to-host copy the host waits for
    assert sites and all(site.startswith("tests/test_gpu.py:") for site in sites), sites


def test_models_run_channels_last_in_bf16_on_the_device():
    model = models.create("resnet32x4", num_classes=100).to(DEVICE, memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and out.shape == (8, 100) and torch.isfinite(out.float()).all()
