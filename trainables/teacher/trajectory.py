"""A teacher's checkpoint trajectory and the online-distillation schedule over it.

The ``teacher`` method writes ``<dir>/epoch_XXXX.pt`` every ``trajectory_every`` epochs plus
``final.pt``. Online distillation (Harutyunyan et al., ICLR 2023) replays those checkpoints so the
student's targets grow more complex as it learns: student epoch e is supervised by the kept
checkpoint m(e) of the same stage of training, from the earliest kept checkpoint to the final teacher.
The teacher source follows a ``TrajectorySchedule``: it loads m(e) into the frozen network at the start
of epoch e (a pure function of the epoch, so a resumed trial loads the same weights).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
FINAL_FILE = "final.pt"


@dataclass(frozen=True)
class TrajectoryPoint:
    """One teacher checkpoint: its file and the teacher epoch it was taken at (None if unknown)."""

    path: Path
    epoch: int | None
    is_final: bool = False


def _file_epoch(path: Path) -> int | None:
    """The ``epoch`` stored in a teacher file's metadata (platform files carry it), else None."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable final file fails later, with the loader's message
        return None
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


def list_trajectory(folder: str | Path, final: str | Path | None = None) -> list[TrajectoryPoint]:
    """The trajectory in teacher-epoch order, ending with the final teacher.

    ``final`` defaults to ``<folder>/final.pt``. An ``epoch_XXXX.pt`` taken at the final teacher's own
    epoch (or later) holds the same weights and is dropped, so the final teacher appears once.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"teacher_trajectory must be a folder of teacher checkpoints; {folder} is not a folder")
    epochs = sorted(
        (int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_FILE.match(p.name)) and p.is_file()
    )
    final_path = Path(final) if final else folder / FINAL_FILE
    if not final_path.is_file():
        raise ConfigError(f"final teacher checkpoint not found: {final_path} (set teacher_checkpoint to it)")
    if not epochs:
        raise ConfigError(
            f"teacher_trajectory {folder} holds no epoch_XXXX.pt files; train the teacher with method "
            "'teacher' (it writes them every trajectory_every epochs)"
        )
    final_epoch = _file_epoch(final_path)
    points = [TrajectoryPoint(p, e) for e, p in epochs if final_epoch is None or e < final_epoch]
    return points + [TrajectoryPoint(final_path, final_epoch, is_final=True)]


def select_checkpoints(points: list[TrajectoryPoint], num: int | None) -> list[TrajectoryPoint]:
    """Keep ``num`` checkpoints evenly spaced over the trajectory, always the first and the final one."""
    total = len(points)
    if num is None or num >= total:
        return list(points)
    if num < 2:
        raise ConfigError(f"num_checkpoints must be >= 2 (the earliest and the final teacher), got {num}")
    # Index i*(total-1)/(num-1) rounded half up, in integers: distinct because num <= total.
    picks = [(2 * i * (total - 1) + (num - 1)) // (2 * (num - 1)) for i in range(num)]
    return [points[j] for j in picks]


def num_blocks(epochs: int, switch_every: int) -> int:
    """How many blocks of ``switch_every`` student epochs a run of ``epochs`` has (the last may be short)."""
    return -(-int(epochs) // int(switch_every))


def schedule_index(epoch: int, epochs: int, switch_every: int, num_points: int) -> int:
    """m(e): index of the kept checkpoint that supervises student epoch ``epoch`` (0-based).

    Student block b = epoch // switch_every of B blocks maps to the checkpoint at the same fraction of
    the trajectory, round(b * (M - 1) / (B - 1)) (half up): monotone, block 0 gets the earliest kept
    checkpoint, the last block the final teacher. A single block (or a single checkpoint) is the final
    teacher throughout. A pure function of (epoch, config), so a resumed trial recomputes it exactly.
    """
    blocks = num_blocks(epochs, switch_every)
    if blocks <= 1 or num_points <= 1:
        return num_points - 1
    block = min(int(epoch) // int(switch_every), blocks - 1)
    return (2 * block * (num_points - 1) + (blocks - 1)) // (2 * (blocks - 1))


def trajectory_folder(cfg: Mapping[str, Any]) -> Path:
    """``teacher_trajectory``, or the folder holding ``teacher_checkpoint`` when it is not set."""
    if cfg.get("teacher_trajectory"):
        return Path(cfg["teacher_trajectory"])
    return Path(cfg["teacher_checkpoint"]).parent


def kept_checkpoints(cfg: Mapping[str, Any]) -> list[TrajectoryPoint]:
    """The checkpoints an ``online`` run uses, earliest first; the last is ``teacher_checkpoint``."""
    points = list_trajectory(trajectory_folder(cfg), cfg["teacher_checkpoint"])
    return select_checkpoints(points, cfg.get("num_checkpoints"))


@dataclass(frozen=True)
class TrajectorySchedule:
    """Which kept checkpoint supervises each student epoch: m(e) over ``points`` (earliest to final)."""

    points: tuple[TrajectoryPoint, ...]
    epochs: int
    switch_every: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrajectorySchedule:
        """The schedule of an ``online`` trial (``teacher_trajectory``, ``num_checkpoints``, ``switch_every``)."""
        return cls(tuple(kept_checkpoints(cfg)), int(cfg["epochs"]), int(cfg["switch_every"]))

    def index(self, epoch: int) -> int:
        return schedule_index(epoch, self.epochs, self.switch_every, len(self.points))

    def point(self, epoch: int) -> TrajectoryPoint:
        return self.points[self.index(epoch)]

    @property
    def final(self) -> TrajectoryPoint:
        return self.points[-1]

    def metrics(self, epoch: int) -> dict[str, int]:
        """``online/teacher_index`` (m) and ``online/teacher_epoch`` (its teacher epoch, -1 if unknown)."""
        point = self.point(epoch)
        return {
            "online/teacher_index": self.index(epoch),
            "online/teacher_epoch": point.epoch if point.epoch is not None else -1,
        }
