"""The frozen teacher network: built from a checkpoint, never trained, outside every method's module tree.

Its weights never reach the optimizer or the trial checkpoint. It does not count: a pass through it
here is free. Supervision in training goes through ``trainables.teacher.source.TeacherSource``, which
counts every image; diagnostics read the network directly, uncounted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


@dataclass
class TeacherOutput:
    """What the teacher yields for a batch: logits, the last feature map and the intermediate stages.

    Outputs served from per-image stored outputs have no ``stages`` (empty list) and ``features`` only
    when the store kept them (else None).
    """

    logits: torch.Tensor
    features: torch.Tensor | None
    stages: list[torch.Tensor]
    preact: list[torch.Tensor] = field(default_factory=list)
    """The pre-activation maps (``want="preact"``, OFD; see ``PreactStages.preact``); empty otherwise."""


class FrozenTeacher:
    """A teacher network in eval mode with no gradients, run under ``torch.inference_mode()``.

    ``forward`` returns ordinary fp32 tensors (cloned out of inference mode) so losses may save them for
    backward. ``head(features)`` applies the frozen classifier differentiably with respect to the *input*
    features: SimKD/IJCKD train the student through it.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.autocast_dtype = autocast_dtype

    def to(self, device: torch.device | str, memory_format: torch.memory_format | None = None) -> FrozenTeacher:
        self.model.to(device)
        if memory_format is not None:
            self.model.to(memory_format=memory_format)
        return self

    def forward(self, x: torch.Tensor, preact: bool = False) -> TeacherOutput:
        """Logits, last feature map and stages of ``x`` (uncounted: callers that supervise count); with
        ``preact`` also the pre-activation maps, from the same pass (``model.forward_preact_stages``)."""
        with torch.inference_mode():
            cast = (torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
            with cast:
                if preact:
                    both = self.model.forward_preact_stages(x)
                    stages, pre = both.stages, both.preact
                else:
                    stages, pre = self.model.forward_stages(x), []
                logits = self.model.forward_head(stages[-1])
        stages = [_to_normal_fp32(s) for s in stages]
        pre = [_to_normal_fp32(p) for p in pre]
        return TeacherOutput(logits=_to_normal_fp32(logits), features=stages[-1], stages=stages, preact=pre)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The teacher's frozen pooling + classifier on (student) features; gradients flow to the input."""
        return self.model.forward_head(features)

    def classifier(self) -> nn.Linear:
        return self.model.get_classifier()

    @property
    def feature_channels(self) -> int:
        return int(self.classifier().in_features)

    def load_weights(self, path: str | Path, arch: str) -> None:
        """Replace the weights with another checkpoint of the same architecture (strict), e.g. a trajectory
        point; not a teacher call."""
        from .. import models

        try:
            models.load_checkpoint(self.model, Path(path), strict=True)
        except (models.CheckpointMismatchError, ValueError) as err:
            raise CheckpointError(f"trajectory checkpoint {path} does not fit teacher '{arch}': {err}") from err
        self.model.eval()


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
    from .. import models

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
