"""Trial checkpoints: everything needed to continue a trial exactly where it stopped.

A checkpoint directory holds ``state.pt`` with the method's modules (student + extra modules), the
optimizer, the LR scheduler, every RNG state, the teacher-call count, method extra state and the number
of completed epochs. Data order and augmentation are drawn from per-epoch generators seeded from the
trial seed, so they need no saved state to repeat exactly.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    torch.save(state, path)
    return path


def load_state(directory: str | Path) -> dict[str, Any]:
    """Load ``state.pt`` from a checkpoint directory (or the file itself) onto the CPU."""
    path = Path(directory)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.is_file():
        from .errors import CheckpointError

        raise CheckpointError(f"no trial checkpoint at {path}")
    # Our own files: RNG states hold numpy/python objects, so full unpickling is needed here.
    return torch.load(path, map_location="cpu", weights_only=False)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffle and augmentation, derived from (seed, epoch) alone."""
    return torch.Generator().manual_seed((int(seed) + 1) * 1_000_003 + int(epoch))
