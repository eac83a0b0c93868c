"""``teacher``: train a teacher with cross-entropy and keep its checkpoint trajectory.

Online distillation replays the trajectory, so weights are written every ``trajectory_every`` epochs
(default 1) plus ``final.pt``, as ``{'model': state_dict, 'arch', 'num_classes', 'epoch', ...}`` files
(the same layout as mdistiller's released teachers, so every tool reads them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Batch
from ..params import ANY, FIXED, Param
from .base import Method, StepResult, register_method

TRAJECTORY_DIR = "trajectory"


def trajectory_dir(cfg: Mapping[str, Any], workdir: Path) -> Path:
    """Where the trajectory goes: ``trajectory_dir`` if set, else ``<workdir>/trajectory``."""
    return Path(cfg["trajectory_dir"]) if cfg.get("trajectory_dir") else workdir / TRAJECTORY_DIR


def save_teacher_file(path: Path, model: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """Write atomically so a crash mid-write never leaves a truncated teacher behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), **meta}, tmp)
    tmp.replace(path)


@register_method
class Teacher(Method):
    """Train the teacher architecture with CE, saving its checkpoint trajectory."""

    name, label, order = "teacher", "teacher", 0
    source = "RepDistiller's CIFAR recipe; files laid out as mdistiller's released teachers"
    params = (
        Param("trajectory_every", int, 1, gt=0, doc="save the weights every N epochs"),
        Param("trajectory_dir", ANY, None, allowed="a folder or null", doc="where (default <trial>/trajectory)"),
    )
    search_space = FIXED
    needs_teacher = False
    model_key = "teacher"

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        return StepResult(logits, {"ce": F.cross_entropy(logits, batch.y)})

    def _meta(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {
            "arch": self.cfg["teacher"],
            "num_classes": self.ctx.num_classes,
            "dataset": self.cfg.get("dataset"),
            "epoch": epoch + 1,
            "val_top1": metrics.get("val/top1"),
            "seed": self.cfg.get("seed"),
        }

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if (epoch + 1) % int(self.cfg["trajectory_every"]) == 0:
            path = trajectory_dir(self.cfg, self.ctx.workdir) / f"epoch_{epoch + 1:04d}.pt"
            save_teacher_file(path, self.student, self._meta(epoch, metrics))

    def on_train_end(self, metrics: dict[str, float]) -> None:
        path = trajectory_dir(self.cfg, self.ctx.workdir) / "final.pt"
        save_teacher_file(path, self.student, self._meta(self.ctx.epochs - 1, metrics))
