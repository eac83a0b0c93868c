"""``online`` and ``offline``: distillation from a teacher's checkpoint trajectory or its final weights.

Harutyunyan et al. (ICLR 2023), "Supervision Complexity and its Role in Knowledge Distillation":
the student fits T^2 * KL(softmax(t/T) || softmax(s/T)) (plus an optional CE weight, 0 by default: pure
distillation). ``online`` switches the teacher along the checkpoints the ``teacher`` method kept, so the
targets grow more complex as the student learns; ``offline`` uses the final teacher throughout. The two
differ in that switch only. Both can log the adjusted supervision complexity of labels, shuffled labels
and both teachers' targets every ``sc_every`` epochs (see ``trainables.diagnostics.complexity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Batch
from ..diagnostics.complexity import SC_KERNELS, ComplexityProbe, gram_memory_bytes
from ..errors import CheckpointError, ConfigError
from ..losses import kd_loss
from ..models import CheckpointMismatchError, load_checkpoint
from ..params import ANY, Float, Int, Param
from ..teacher import load_teacher_model
from ..trajectory import TrajectoryPoint, list_trajectory, schedule_index, select_checkpoints
from .base import Method, StepResult, register_method

TEMPERATURE = Param("temperature", float, 1.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature")
SC_PARAMS = (
    Param("sc_every", int, 0, ge=0, doc="log supervision complexity every N epochs (0: never)"),
    Param("sc_n", int, 256, ge=2, doc="training images the complexity is measured on"),
    Param("sc_kernel", str, "per_logit", choices=SC_KERNELS, doc="which NTK Gram matrix the complexity uses"),
    Param("sc_ridge", float, 1e-6, ge=0, doc="ridge added to the Gram matrix"),
)
MAX_SC_JACOBIAN_BYTES = 4 << 30
"""Refuse SC settings whose Jacobian rows would need more than this (lower sc_n or use sc_kernel: sum)."""


class TrajectoryDistillation(Method):
    """Shared loss and supervision-complexity logging of ``online`` and ``offline`` (not registered)."""

    source = "Harutyunyan et al., ICLR 2023"
    params = (
        TEMPERATURE,
        Param("ce_weight", float, 0.0, ge=0, doc="weight of the cross-entropy (0: pure distillation)"),
        *SC_PARAMS,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._probe: ComplexityProbe | None = None
        self._offline_targets: torch.Tensor | None = None
        if int(self.cfg["sc_every"]) > 0:
            train_size = len(self.ctx.extras["data"].train)
            if int(self.cfg["sc_n"]) > train_size:
                raise ConfigError(f"sc_n must be <= {train_size} (the training split's size), got {self.cfg['sc_n']}")
            self._check_sc_memory()

    def _check_sc_memory(self) -> None:
        params = sum(p.numel() for p in self.student.parameters())
        need = gram_memory_bytes(params, int(self.cfg["sc_n"]), self.ctx.num_classes, self.cfg["sc_kernel"])
        if need > MAX_SC_JACOBIAN_BYTES:
            raise ConfigError(
                f"sc_n {self.cfg['sc_n']} with sc_kernel '{self.cfg['sc_kernel']}' needs ~{need / 2**30:.1f} GiB "
                f"of Jacobian rows for this student (limit {MAX_SC_JACOBIAN_BYTES / 2**30:.0f} GiB); "
                "lower sc_n or use sc_kernel per_logit/sum"
            )

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        logits = self.student(batch.x)
        teacher_logits = self.teacher(batch.x).logits
        losses = {
            "ce": float(self.cfg["ce_weight"]) * F.cross_entropy(logits, batch.y),
            "kd": kd_loss(logits, teacher_logits, self.cfg["temperature"]),
        }
        return StepResult(logits, losses)

    # -- supervision complexity -----------------------------------------------------------------------------
    def _sc_due(self, epoch: int) -> bool:
        every = int(self.cfg["sc_every"])
        return every > 0 and (epoch + 1) % every == 0

    def _final_teacher_targets(self, probe: ComplexityProbe) -> torch.Tensor:
        """The final teacher's softened probabilities on the probe (a diagnostic: not a teacher call)."""
        if self._offline_targets is None:
            model = load_teacher_model(self.cfg["teacher"], self.cfg["teacher_checkpoint"], self.ctx.num_classes)
            model.to(self.ctx.device)
            self._offline_targets = probe.soft_targets(model, self.cfg["temperature"])
        return self._offline_targets

    def complexity(self, data: Any) -> dict[str, float]:
        """ASC of labels, shuffled labels, the offline (final) and the current online teacher's targets."""
        if self._probe is None:
            seed = int(self.cfg.get("split_seed") or 0)
            self._probe = ComplexityProbe(data.train, int(self.cfg["sc_n"]), self.ctx.num_classes, seed)
        probe = self._probe
        targets = {
            "offline_teacher": self._final_teacher_targets(probe),
            "online_teacher": probe.soft_targets(self.teacher.model, self.cfg["temperature"]),
        }
        return probe.metrics(self.student, targets, self.cfg["sc_kernel"], float(self.cfg["sc_ridge"]))

    def epoch_metrics(self, data: Any, epoch: int) -> dict[str, float]:
        metrics = super().epoch_metrics(data, epoch)  # the shared diagnostics (bound terms)
        if self._sc_due(epoch):
            metrics.update(self.complexity(data))
        return metrics


@register_method
class Offline(TrajectoryDistillation):
    """Pure distillation (T^2 KL, optional CE) from the final teacher throughout."""

    name, label, order = "offline", "offline KD", 150

    def _final_teacher_targets(self, probe: ComplexityProbe) -> torch.Tensor:
        return probe.soft_targets(self.teacher.model, self.cfg["temperature"])


def trajectory_folder(cfg: Mapping[str, Any]) -> Path:
    """``teacher_trajectory``, or the folder holding ``teacher_checkpoint`` when it is not set."""
    if cfg.get("teacher_trajectory"):
        return Path(cfg["teacher_trajectory"])
    return Path(cfg["teacher_checkpoint"]).parent


def kept_checkpoints(cfg: Mapping[str, Any]) -> list[TrajectoryPoint]:
    """The checkpoints an ``online`` run uses, earliest first; the last is ``teacher_checkpoint``."""
    points = list_trajectory(trajectory_folder(cfg), cfg["teacher_checkpoint"])
    return select_checkpoints(points, cfg.get("num_checkpoints"))


@register_method
class Online(TrajectoryDistillation):
    """Online distillation: the teacher advances along its checkpoint trajectory."""

    name, label, order = "online", "online KD", 160
    params = (
        Param("switch_every", int, 1, ge=1, search=Int(1, 10), doc="epochs between teacher switches"),
        *TrajectoryDistillation.params,
        Param("teacher_trajectory", ANY, None, allowed="a folder or null",
              doc="the teacher's epoch_XXXX.pt files (default: teacher_checkpoint's folder)"),
        Param("num_checkpoints", int, None, ge=2, doc="use this many checkpoints, evenly spaced (null: all)"),
    )

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        kept_checkpoints(cfg)  # the folder, its epoch files and the final teacher must exist now

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoints = kept_checkpoints(self.cfg)
        self.loaded_index: int | None = None

    def scheduled_index(self, epoch: int) -> int:
        return schedule_index(epoch, self.ctx.epochs, int(self.cfg["switch_every"]), len(self.checkpoints))

    def on_epoch_start(self, epoch: int) -> None:
        """Load m(epoch) into the frozen teacher (strict); recomputed from the epoch, so resume is exact."""
        index = self.scheduled_index(epoch)
        if index != self.loaded_index:
            path = self.checkpoints[index].path
            try:
                load_checkpoint(self.teacher.model, path, strict=True)
            except (CheckpointMismatchError, ValueError) as err:
                raise CheckpointError(
                    f"trajectory checkpoint {path} does not fit teacher '{self.cfg['teacher']}': {err}"
                ) from err
            self.teacher.model.eval()
            self.loaded_index = index

    def epoch_metrics(self, data: Any, epoch: int) -> dict[str, float]:
        point = self.checkpoints[self.scheduled_index(epoch)]
        metrics: dict[str, Any] = {
            "online/teacher_index": self.scheduled_index(epoch),
            "online/teacher_epoch": point.epoch if point.epoch is not None else -1,
        }
        metrics.update(super().epoch_metrics(data, epoch))
        return metrics
