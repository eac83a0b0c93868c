"""Trial checkpoints: everything needed to continue a trial exactly where it stopped, and nothing that runs code.

A checkpoint directory holds ``state.pt`` with the method's modules (student + extra modules), the
optimizer, the LR scheduler, every RNG state, the teacher-call count, method extra state and the number
of completed epochs. Data order and augmentation are drawn from per-epoch generators seeded from the
trial seed, so they need no saved state to repeat exactly.

Why ``weights_only``: on a cluster the study dir lives on shared storage, and unpickling a file found
there would run whatever code someone put in it. So the state holds only tensors and plain containers
(the numpy and Python RNG states are stored as plain values, not as their pickled objects) and is read
with ``torch.load(weights_only=True)``. A checkpoint written before this (it needs full unpickling)
is refused with one line naming ``convert_checkpoints`` (``python -m trainables convert-checkpoint DIR``).

Writes are atomic (a temporary name, then a rename): a crash or a full disk mid-write leaves the old file
whole; ``damage`` tells a complete checkpoint from a cut one without unpickling it. A checkpoint is written
in a ``staging_dir`` first, which Tune copies to the trial's storage.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import random
import re
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, CheckpointWriteError, UnsafeCheckpointError

STATE_FILE = "state.pt"
CONVERT_COMMAND = "python -m trainables convert-checkpoint"
STAGING_PREFIX = "kd-ckpt-"
_STAGING_NAME = re.compile(rf"{STAGING_PREFIX}(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+")
_swept = False


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (what ``weights_only=True`` reads back)."""
    numpy_state = np.random.get_state(legacy=False)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(numpy_state["bit_generator"]),
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": np_state["bit_generator"],
        "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": int(np_state["pos"])},
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    })
    py_state = state["python"]
    random.setstate((int(py_state["version"]), tuple(py_state["internal"]), py_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state.pt`` atomically; a full disk raises ``CheckpointWriteError`` and leaves no partial file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    partial = directory / f".{STATE_FILE}.partial"
    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory first: torch's own file writer reports a full disk as a RuntimeError
    try:
        with open(partial, "wb") as fh:
            fh.write(buffer.getbuffer())
        partial.replace(path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointWriteError(
                f"no space left on the device while writing the checkpoint of epoch {state.get('epoch')} to "
                f"{path}; the previous checkpoint is intact: free some space and resume"
            ) from err
        raise
    return path


@contextlib.contextmanager
def staging_dir() -> Iterator[Path]:
    """A temporary folder for one checkpoint, removed once Tune has copied it to the trial's storage.

    Why not a bare ``TemporaryDirectory``: a worker killed while Tune copies (a kill -9, a lost node, a
    trial stopped mid-report) never cleans up, and each folder left holds a whole ``state.pt``. So the name
    carries the writer's host and pid, and the first checkpoint of every process removes the folders of
    this host's processes that no longer run (and those of the unnamed kind, from before this, once a day
    old); a folder of another host (a temporary folder shared between nodes) is left to that host.
    """
    global _swept
    root = Path(tempfile.gettempdir())
    if not _swept:
        remove_stale_staging(root)
        _swept = True
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{_host()}-{os.getpid()}-", dir=root) as tmp:
        yield Path(tmp)


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove the staging folders under ``root`` whose process on this host is gone; returns the ones removed."""
    removed, host = [], _host()
    for folder in root.glob(f"{STAGING_PREFIX}*"):
        named = _STAGING_NAME.fullmatch(folder.name)
        if named and named["host"] != host:
            continue
        try:
            stale = not _running(int(named["pid"])) if named else folder.stat().st_mtime < time.time() - 86400
        except OSError:
            continue
        if stale and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)  # another user's folder stays: not ours to remove
            removed.append(folder)
    return removed


def _host() -> str:
    return socket.gethostname().replace(os.sep, "_") or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _state_path(directory: str | Path) -> Path:
    path = Path(directory)
    return path / STATE_FILE if path.is_dir() else path


def damage(directory: str | Path) -> str | None:
    """Why ``state.pt`` is not a complete checkpoint (missing, cut, a bad CRC), or None; unpickles nothing."""
    path = _state_path(directory)
    if not path.is_file():
        return "missing"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"not a complete torch file ({err})"
    return f"member {bad} fails its CRC check" if bad else None


def load_state(directory: str | Path) -> dict[str, Any]:
    """Load ``state.pt`` from a checkpoint directory (or the file itself) onto the CPU, ``weights_only=True``."""
    path = _state_path(directory)
    if not path.is_file():
        raise CheckpointError(f"no trial checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it asks to unpickle {found.group(1)}" if found else "it holds more than tensors and plain values"
        raise UnsafeCheckpointError(
            f"{path} is not a weights-only trial checkpoint ({what}) and is not loaded; if it is a checkpoint "
            f"you wrote with an older kdstudy and you trust it, convert it once: {CONVERT_COMMAND} {path.parent}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is damaged ({first}); a crash or a full disk may have cut it") from None


def convert_checkpoints(root: str | Path) -> list[Path]:
    """Rewrite every old ``state.pt`` under ``root`` (a checkpoint, trial, stage or study dir) as weights-only.

    Full unpickling runs here, once, on files the caller vouches for; each converted file keeps its old
    version next to it as ``state.pt.unsafe``. Files already weights-only are left alone. Returns the
    converted files.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob(STATE_FILE))
    converted = []
    for path in files:
        try:
            load_state(path)
            continue
        except UnsafeCheckpointError:
            pass
        state = torch.load(path, map_location="cpu", weights_only=False)
        state["rng"] = _plain_rng(state.get("rng") or {})
        backup = path.with_name(path.name + ".unsafe")
        path.replace(backup)
        save_state(path.parent, state)
        load_state(path)  # proves the new file needs nothing more
        converted.append(path)
    return converted


def _plain_rng(old: dict[str, Any]) -> dict[str, Any]:
    """The RNG states of an old checkpoint (numpy's tuple, Python's tuple) in the plain form of ``rng_state``."""
    new = dict(old)
    numpy_state = old.get("numpy")
    if isinstance(numpy_state, tuple):
        name, key, pos, has_gauss, gauss = numpy_state[:5]
        new["numpy"] = {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                        "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}
    python_state = old.get("python")
    if isinstance(python_state, tuple):
        version, internal, gauss_next = python_state
        new["python"] = {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}
    return new


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffle and augmentation, derived from (seed, epoch) alone."""
    return torch.Generator().manual_seed((int(seed) + 1) * 1_000_003 + int(epoch))
