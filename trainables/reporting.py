"""Where the loop's per-epoch metrics and checkpoints go.

The loop calls ``reporter(metrics, checkpoint_dir)`` once per epoch. Under Ray Tune that is
``tune.report`` (see ``study.trainable``); outside Ray, ``RunDirReporter`` writes the same things
to a plain folder so a run can be debugged, resumed and inspected without Ray.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf become None so every line is valid JSON for any reader."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


class RunDirReporter:
    """Append metrics to ``<run_dir>/progress.jsonl`` and keep the latest checkpoint in ``<run_dir>/checkpoint``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.history.append(dict(metrics))
        with open(self.run_dir / "progress.jsonl", "a") as fh:
            fh.write(json.dumps(json_safe(metrics)) + "\n")
        if checkpoint_dir is not None:
            staging = self.run_dir / "checkpoint.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint_dir, staging)
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            staging.replace(self.checkpoint_dir)
