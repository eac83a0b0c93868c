"""The files a study names, opened and checked at the end of spec validation, before Ray starts.

Without this a teacher file of random bytes, a truncated one, a checkpoint of another architecture or
class count, or a damaged ``cifar-100-python/train`` passes validation and then fails every trial at load
time (each retried, each a traceback through Ray). Here each is one ``SpecError`` naming the spec key,
the file, what was found and what was expected.

* data: every file the data set reads (CIFAR batches, read completely) or its folder layout (ImageNet);
* ``teacher.checkpoints``: each file loaded with ``weights_only=True`` into its architecture, built for the
  data set's class count, with ``strict=True`` (the loader trials use);
* ``teacher.trajectories``: every ``epoch_*.pt`` (and ``final.pt``) checked cheaply, keys and shapes
  against the architecture's state dict, tensor data memory-mapped, not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.errors import PlatformError

from .spec_schema import SpecError


def check_files(spec: Any) -> None:
    """Open every data, teacher and trajectory file ``spec`` (a ``study.spec.Spec``, which calls this module
    and so is not imported here) names; raise SpecError at the first bad one."""
    from trainables.data import dataset_info
    from trainables.data_files import check_data_files

    data = spec.data["data"]
    try:
        found_classes = check_data_files(data["dataset"], data["root"])
    except PlatformError as err:
        raise SpecError(f"data.root: {err}") from None
    num_classes = found_classes or dataset_info(data["dataset"]).shape(spec.data["config"])[0]
    teacher = spec.data["teacher"]
    for arch, path in teacher["checkpoints"].items():
        check_teacher_checkpoint(arch, Path(path), num_classes)
    for arch, folder in teacher["trajectories"].items():
        check_trajectory(arch, Path(folder), num_classes)


def check_teacher_checkpoint(arch: str, path: Path, num_classes: int) -> None:
    """Load ``path`` into ``arch`` exactly as a trial will (``trainables.teacher.load_teacher_model``)."""
    from trainables.errors import CheckpointError
    from trainables.teacher import load_teacher_model

    try:
        load_teacher_model(arch, path, num_classes)
    except CheckpointError as err:
        raise SpecError(f"teacher.checkpoints.{arch}: {err}") from None


def trajectory_files(folder: Path) -> list[Path]:
    """The checkpoint files of a trajectory folder: ``epoch_*.pt`` in order, then ``final.pt`` if present."""
    from trainables.teacher.trajectory import EPOCH_FILE, FINAL_FILE

    epochs = sorted(p for p in folder.iterdir() if EPOCH_FILE.match(p.name) and p.is_file())
    final = folder / FINAL_FILE
    return epochs + ([final] if final.is_file() else [])


def check_trajectory(arch: str, folder: Path, num_classes: int) -> None:
    """Keys and shapes of every trajectory file against ``arch`` with ``num_classes`` (nothing is loaded)."""
    from trainables import models
    from trainables.models.checkpoint import CheckpointMismatchError, fitting_state, read_checkpoint

    model = models.create(arch, num_classes=num_classes)
    for path in trajectory_files(folder):
        try:
            fitting_state(model, read_checkpoint(path, mmap=True), path, strict=True)
        except (CheckpointMismatchError, ValueError, FileNotFoundError) as err:
            raise SpecError(
                f"teacher.trajectories.{arch}: teacher '{arch}' ({num_classes} classes) does not fit "
                f"trajectory file {path}: {err}"
            ) from None
