"""The diagnostics the loop runs after each epoch's evaluation, merged into that epoch's metrics.

* the error-bound terms and fidelity (``bound/*``, ``fidelity/top1``) for every method with a teacher,
  unless ``bound_metrics: false`` (``trainables.diagnostics.bounds``; the method supplies its
  prediction views through ``bound_views``);
* supervision complexity (``sc/*``) every ``sc_every`` epochs where a method declares that key
  (``online``, ``offline``; ``trainables.diagnostics.complexity``), and once at initialisation
  (``before_training``, reported as ``sc_init/*`` with the first epoch's metrics: the curves start there).

Teacher passes here read the frozen network directly and are not counted as teacher calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .bounds import bound_metrics
from .complexity import ComplexityLog


class EpochDiagnostics:
    """Built once per trial by the loop; ``run(epoch)`` gives the diagnostic metrics of that epoch."""

    def __init__(
        self, cfg: Mapping[str, Any], method: Any, data: Any, num_classes: int, amp_dtype: torch.dtype | None
    ) -> None:
        self.method = method
        self.teacher = method.teacher
        self.data = data
        self.amp_dtype = amp_dtype
        self.batch_size = int(cfg.get("eval_batch_size", 256))
        self.bounds = self.teacher is not None and bool(cfg.get("bound_metrics", True))
        self.complexity = ComplexityLog(cfg, num_classes) if self.teacher is not None else None
        self._pending: dict[str, float] = {}

    def before_training(self) -> None:
        """The measurement at initialisation (a fresh trial only), held for the first epoch's report."""
        if self.complexity is not None and self.complexity.every > 0:
            self._pending = self.complexity(self.method.student, self.teacher, self.data.train, initial=True)

    def run(self, epoch: int) -> dict[str, float]:
        metrics, self._pending = self._pending, {}
        if self.bounds:
            metrics.update(bound_metrics(self.method, self.data.val, self.batch_size, self.amp_dtype))
        if self.complexity is not None and self.complexity.due(epoch):
            metrics.update(self.complexity(self.method.student, self.teacher, self.data.train))
        return metrics
