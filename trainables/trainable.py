"""Ray Tune function trainables: one per registered method, all running the shared loop.

Ray is imported lazily so the rest of ``trainables`` (and every test of the loop) works without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .loop import train
from .methods import get_method


def _tune_reporter(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
    tune.report(metrics, checkpoint=checkpoint)


def trial_dir() -> Path:
    """The trial's own folder (artifacts such as a teacher trajectory or an exported model go here)."""
    from ray import tune

    try:
        return Path(tune.get_context().get_trial_dir())
    except Exception:  # noqa: BLE001 - outside a Tune session
        return Path(os.getcwd())


def run_tune_trial(config: dict[str, Any]) -> None:
    """Body of every trainable: continue from Tune's checkpoint when the trial is restored."""
    from ray import tune

    workdir = trial_dir()
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(config, reporter=_tune_reporter, workdir=workdir)
        return
    with checkpoint.as_directory() as resume_dir:
        train(config, reporter=_tune_reporter, resume_from=resume_dir, workdir=workdir)


def trainable_for(method: str) -> Callable[[dict[str, Any]], None]:
    """The function trainable for ``method`` (named after it, so Ray's trial names say which method)."""
    get_method(method)  # unknown names fail here, listing the registered ones

    def trainable(config: dict[str, Any]) -> None:
        run_tune_trial({**config, "method": method})

    trainable.__name__ = trainable.__qualname__ = method
    return trainable
