"""Shared fixtures: a real teacher trained once per test run on the embedded digits, and Ray.

Everything here is real: real torch training, a real local Ray runtime with 2 CPUs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TEACHER_ARCH = "resnet20"
TEACHER_EPOCHS = 5


def _trained_once(tmp_path_factory: pytest.TempPathFactory, name: str, cfg: dict) -> tuple[Path, dict]:
    """Train ``cfg`` once per test run, shared by every pytest-xdist worker: the first trains under a file
    lock in the run's common temp folder, the others wait for it and read its metrics. Returns (workdir, metrics).
    """
    import json

    from filelock import FileLock

    from trainables.loop import train

    base = tmp_path_factory.getbasetemp()
    common = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: one folder per worker
    workdir, done = common / name, common / f"{name}.metrics.json"
    with FileLock(str(common / f"{name}.lock")):
        if not done.exists():
            metrics = train(cfg, workdir=workdir)
            done.write_text(json.dumps(metrics, default=float))
    return workdir, json.loads(done.read_text())


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A resnet20 teacher trained for a few epochs on digits, with its full checkpoint trajectory.

    Returns ``{"arch", "checkpoint", "trajectory_dir", "metrics"}``.
    """
    cfg = {"method": "teacher", "teacher": TEACHER_ARCH, "dataset": "digits", "epochs": TEACHER_EPOCHS,
           "batch_size": 32, "seed": 0}
    workdir, metrics = _trained_once(tmp_path_factory, "digits_teacher", cfg)
    trajectory = workdir / "trajectory"
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
    cfg = {"method": "teacher", "teacher": "wrn_16_2", "dataset": "digits", "epochs": 1, "batch_size": 32,
           "train_subset": 384, "seed": 0}
    workdir, metrics = _trained_once(tmp_path_factory, "wide_digits_teacher", cfg)
    return {"arch": "wrn_16_2", "checkpoint": str(workdir / "trajectory" / "final.pt"), "metrics": metrics}


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
    """One local Ray runtime (2 CPUs) for every test that needs Ray, configured as a study's own local Ray."""
    ray = pytest.importorskip("ray")
    from study.runner import LOCAL_RAY_CONFIG

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _system_config=LOCAL_RAY_CONFIG)
    yield ray
    ray.shutdown()


def write_tiny_imagenet(root: Path, classes: int = 2) -> Path:
    """A tiny ImageFolder tree (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``, real 8x8 JPEGs). Returns root."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (40 * c, 90, 160)).save(folder / f"img_{c}.JPEG")
    return root


def write_fake_cifar(root: Path, dataset: str = "cifar100", per_file: int = 12) -> Path:
    """A tiny CIFAR release under ``root`` in the python format torchvision reads: one pickled dict per
    batch file (``data`` (N, 3072) uint8, ``labels``/``fine_labels``) plus the meta file. Returns its folder.
    """
    import pickle

    import numpy as np

    from trainables.data_files import CIFAR

    layout = CIFAR[dataset]
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in layout.train + layout.test:
        labels = [int(v) for v in np.arange(per_file) % layout.classes]
        entry = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), layout.label_key: labels,
                 "filenames": [f"{name}_{i}.png" for i in range(per_file)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = "meta" if dataset == "cifar100" else "batches.meta"
    key = "fine_label_names" if dataset == "cifar100" else "label_names"
    (folder / meta).write_bytes(pickle.dumps({key: [f"class{i}" for i in range(layout.classes)]}))
    return folder


@pytest.fixture
def fake_cifar():
    """``write_fake_cifar`` as a fixture: ``fake_cifar(root, dataset='cifar100', per_file=12) -> folder``."""
    return write_fake_cifar


DELETE = object()
"""A value for ``spec_with``: remove that key instead of setting it."""


def spec_with(base: dict, **changes) -> dict:
    """A deep copy of the spec ``base`` with ``a__b=value`` setting ``spec['a']['b']`` (``DELETE`` removes it)."""
    import copy

    spec = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = spec
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return spec
