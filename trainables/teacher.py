"""The frozen teacher: built from a checkpoint, never trained, and every call counted.

The teacher is kept out of the method's ``nn.Module`` tree on purpose: its weights never reach the
optimizer or the trial checkpoint, and ``teacher_calls`` counts every image it sees so a teacher-call
budget (Comparative KD) can be enforced for any method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import CheckpointError, TeacherBudgetExceeded

if TYPE_CHECKING:
    from .data import Batch
    from .teacher_store import TeacherStore


@dataclass
class TeacherOutput:
    """What one teacher pass yields: logits, the last feature map and the intermediate stages.

    Outputs served from a ``TeacherStore`` have no ``stages`` (empty list) and ``features`` only when the
    cache kept them (else None).
    """

    logits: torch.Tensor
    features: torch.Tensor | None
    stages: list[torch.Tensor]


class FrozenTeacher:
    """A teacher network in eval mode with no gradients, run under ``torch.inference_mode()``.

    ``__call__`` returns ordinary tensors (cloned out of inference mode) so losses may save them for
    backward. ``head(features)`` applies the teacher's frozen classifier differentiably with respect to
    the *input* features: SimKD/IJCKD train the student through it.
    """

    def __init__(self, model: nn.Module, budget: int | None = None, autocast_dtype: torch.dtype | None = None):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.budget = budget
        self.calls = 0
        self.autocast_dtype = autocast_dtype
        self.store: TeacherStore | None = None
        """Attached by the loop with ``teacher_store: true``; ``for_batch`` serves from it where valid."""

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> FrozenTeacher:
        self.model.to(device)
        if memory_format is not None:
            self.model.to(memory_format=memory_format)
        return self

    @torch.compiler.disable
    def count(self, n: int) -> None:
        """Add ``n`` images to the call count; exceeding a budget is an error, never silent.

        Kept out of ``torch.compile`` graphs: a traced counter is a guard that fails on every step.
        """
        if self.budget is not None and self.calls + n > self.budget:
            raise TeacherBudgetExceeded(
                f"teacher call budget of {self.budget} images exceeded ({self.calls} used, {n} more asked)"
            )
        self.calls += n

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        self.count(int(x.shape[0]))
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                    stages = self.model.forward_stages(x)
                    logits = self.model.forward_head(stages[-1])
            else:
                stages = self.model.forward_stages(x)
                logits = self.model.forward_head(stages[-1])
        stages = [_to_normal_fp32(s) for s in stages]
        return TeacherOutput(logits=_to_normal_fp32(logits), features=stages[-1], stages=stages)

    def for_batch(self, batch: Batch) -> TeacherOutput:
        """Teacher outputs for a *training* batch: from the attached store when it is valid for the batch
        (no augmentation; looked up by ``batch.index``), else a forward pass on ``batch.x``.

        Methods that only need logits (or the last feature map) call this instead of ``teacher(batch.x)``
        to benefit from ``teacher_store``; it is not meant for batches of other splits.
        """
        if self.store is not None and self.store.serves(batch):
            return self.store.lookup(batch.index)
        return self(batch.x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The teacher's frozen pooling + classifier on (student) features; gradients flow to the input."""
        return self.model.forward_head(features)

    def classifier(self) -> nn.Linear:
        return self.model.get_classifier()

    @property
    def feature_channels(self) -> int:
        return int(self.classifier().in_features)

    def state(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))


def _to_normal_fp32(t: torch.Tensor) -> torch.Tensor:
    """An fp32 copy outside inference mode (losses may save it for backward).

    A bf16 output is copied by the cast itself; only fp32 outputs need an explicit clone.
    """
    return t.float() if t.dtype != torch.float32 else t.clone()


def load_teacher_model(arch: str, checkpoint: str | Path, num_classes: int) -> nn.Module:
    """Create ``arch`` and load ``checkpoint`` into it with ``strict=True``.

    Accepts the platform's own teacher files and external ``{'model': state_dict}`` files (the
    RepDistiller/mdistiller release format) or raw state_dicts.
    """
    from . import models

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint not found: {path} (teacher_checkpoint must name a file)")
    model = models.create(arch, num_classes=num_classes)
    try:
        models.load_checkpoint(model, path, strict=True)
    except (models.CheckpointMismatchError, ValueError) as err:
        raise CheckpointError(
            f"teacher '{arch}' ({num_classes} classes) does not fit its checkpoint: {err}"
        ) from err
    return model
