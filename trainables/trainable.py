"""Helpers for code that runs inside a Ray Tune trial.

The trainables themselves live in ``study.trainable`` (one per method, with the resume logic a study
needs); Ray is imported lazily so the rest of ``trainables`` works without it.
"""

from __future__ import annotations

import os
from pathlib import Path


def trial_dir() -> Path:
    """The trial's own folder (artifacts such as a teacher trajectory or an exported model go here)."""
    from ray import tune

    try:
        return Path(tune.get_context().get_trial_dir())
    except Exception:  # noqa: BLE001 - outside a Tune session
        return Path(os.getcwd())
