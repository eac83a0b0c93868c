"""Shared fixtures: a real teacher trained once per test session on the embedded digits, and Ray.

Everything here is real: real torch training, a real local Ray runtime with 2 CPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TEACHER_ARCH = "resnet20"
TEACHER_EPOCHS = 5


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A resnet20 teacher trained for a few epochs on digits, with its full checkpoint trajectory.

    Returns ``{"arch", "checkpoint", "trajectory_dir", "metrics"}``.
    """
    from trainables.loop import train

    workdir = tmp_path_factory.mktemp("digits_teacher")
    metrics = train(
        {
            "method": "teacher",
            "teacher": TEACHER_ARCH,
            "dataset": "digits",
            "epochs": TEACHER_EPOCHS,
            "batch_size": 32,
            "seed": 0,
        },
        workdir=workdir,
    )
    trajectory = Path(workdir) / "trajectory"
    return {
        "arch": TEACHER_ARCH,
        "checkpoint": str(trajectory / "final.pt"),
        "trajectory_dir": str(trajectory),
        "metrics": metrics,
    }


@pytest.fixture(scope="session")
def wide_digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A wrn_16_2 teacher (128 channels, vs resnet8's 64) briefly trained on digits, for tests where the
    student's and teacher's feature widths must differ (connectors, undefined bound terms).

    Cheap on purpose (one epoch on 384 images): its accuracy is not what these tests check.
    Returns ``{"arch", "checkpoint", "metrics"}``.
    """
    from trainables.loop import train

    workdir = tmp_path_factory.mktemp("wide_digits_teacher")
    cfg = {"method": "teacher", "teacher": "wrn_16_2", "dataset": "digits", "epochs": 1, "batch_size": 32,
           "train_subset": 384, "seed": 0}
    metrics = train(cfg, workdir=workdir)
    return {"arch": "wrn_16_2", "checkpoint": str(Path(workdir) / "trajectory" / "final.pt"), "metrics": metrics}


@pytest.fixture
def student_cfg(digits_teacher: dict) -> dict:
    """A short distillation config on digits against the session teacher (add 'method' and knobs)."""
    return {
        "dataset": "digits",
        "teacher": digits_teacher["arch"],
        "teacher_checkpoint": digits_teacher["checkpoint"],
        "student": "resnet8",
        "epochs": 3,
        "batch_size": 32,
        "seed": 0,
    }


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime (2 CPUs) for every test that needs Ray."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
