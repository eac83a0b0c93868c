"""The teacher stream: the teacher's logits on every augmented training batch, computed once per study.

Augmentation is a pure function of (trial seed, epoch), so every trial of a search stage (and of a grid
that shares a seed) shows the teacher exactly the same batches in the same order. The first trial to
reach an epoch computes the teacher's logits batch by batch, as it trains, and writes them in chunks of
``CHUNK_BATCHES`` batches to ``<teacher_stream_dir>/<key>/epoch_XXXX/chunk_XXXXX.pt`` (atomically: a
half-written chunk is never read); every other trial with the same key reads them instead of running
the teacher. The key covers what the logits depend on: the teacher file's content (the trajectory
checkpoint in use for ``online``), the data keys, the trial seed, the batch size, the augmentation, the
precision, the memory format, ``compile``, the device type, the thread count, the torch version and the
stored dtype (the last few change the rounding of the teacher's pass).

One writer per (key, epoch): the first trial to ask for a batch of the epoch takes the epoch's lock; a
trial that finds it taken follows the writer chunk by chunk and waits for the next chunk up to ``WAIT_S``
seconds, after which it computes the rest of the epoch on its own; as soon as the lock is free (the writer
finished or died) it takes over as the writer. Every live teacher pass on a training batch is recorded,
so trials of methods that need the teacher's features too (computed live) still feed the stream. Chunks
already written are reused after a kill. ``teacher_stream_max_gb`` bounds the folder: before an epoch is
written, the oldest epochs are evicted until it fits.

Exact: a reader gets the very tensors the writer trained on (stored in float32 by default; with
``teacher_stream_dtype: bfloat16`` every trial, writer included, trains on the rounded logits), so on the same device,
precision and thread count a reading trial trains bit-identically to one that computes the teacher.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data import DATA_KEYS
from ..errors import ConfigError
from .store import store_key

CHUNK_BATCHES = 8
WAIT_S = 120.0
POLL_S = 0.02
STREAM_CHOICES = ("auto", True, False)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STREAM_DEFAULTS: dict[str, Any] = {
    "teacher_stream": "auto",
    "teacher_stream_dir": None,
    "teacher_stream_dtype": "float32",
    "teacher_stream_max_gb": 50.0,
}
"""Loop keys of the stream (README "Teacher source"): ``auto`` streams wherever a folder is given."""


def validate_stream_keys(cfg: Mapping[str, Any]) -> None:
    """One line per bad value, before any work."""
    if cfg.get("teacher_stream", "auto") not in STREAM_CHOICES:
        raise ConfigError(f"teacher_stream must be one of auto, true, false; got '{cfg['teacher_stream']}'")
    if cfg.get("teacher_stream") is True and not cfg.get("teacher_stream_dir"):
        raise ConfigError("teacher_stream: true needs teacher_stream_dir (the folder the trials share)")
    dtype = cfg.get("teacher_stream_dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"teacher_stream_dtype must be one of {', '.join(DTYPES)}; got '{dtype}'")
    limit = cfg.get("teacher_stream_max_gb", 50.0)
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        raise ConfigError(f"teacher_stream_max_gb must be a number > 0, got {limit!r}")


def stream_enabled(cfg: Mapping[str, Any]) -> bool:
    """``auto`` and ``true`` stream where a folder is given; the source uses it for logits-only requests."""
    return cfg.get("teacher_stream", "auto") is not False and bool(cfg.get("teacher_stream_dir"))


_HASHES: dict[tuple[str, int, int], str] = {}


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and modification time)."""
    p = Path(path).absolute()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _HASHES[memo] = digest.hexdigest()
    return _HASHES[memo]


def _try_lock(path: Path) -> Any | None:
    """An exclusive, non-blocking advisory lock on ``path``: the open file (keep it to hold), or None."""
    import fcntl

    fh = open(path, "a")  # held until release
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


class TeacherStream:
    """One trial's view of the stream: which epoch, which step, writer or follower."""

    def __init__(self, cfg: Mapping[str, Any], device: torch.device, amp_dtype: torch.dtype | None) -> None:
        self.root = Path(cfg["teacher_stream_dir"]).expanduser().absolute()
        self.dtype = DTYPES[str(cfg.get("teacher_stream_dtype", "float32"))]
        self.max_bytes = float(cfg.get("teacher_stream_max_gb", 50.0)) * 2**30
        self.parts = {
            "teacher": cfg["teacher"],
            "data": {k: cfg.get(k) for k in DATA_KEYS if k != "num_workers"},
            "seed": cfg["seed"],
            "batch_size": cfg["batch_size"],
            "augment": cfg["augment"],
            "amp": str(amp_dtype),
            "channels_last": cfg.get("channels_last"),
            "compile": cfg.get("compile"),
            "device": device.type,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "dtype": str(self.dtype),
        }
        self.folder: Path | None = None
        self.step = 0
        self._lock: Any | None = None
        self._role_taken = False
        self._given_up = False
        self._chunk: dict[str, Any] | None = None
        self._chunk_no = -1
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._first_pending = 0

    # -- epochs -------------------------------------------------------------------------------------------
    def begin(self, epoch: int, teacher_file: str | Path) -> None:
        """Start epoch ``epoch`` with the teacher weights of ``teacher_file``; become its writer if free."""
        self.end()
        key = store_key(kind="stream", teacher_hash=file_hash(teacher_file), **self.parts)
        self.folder = self.root / key / f"epoch_{epoch:04d}"
        self.step, self._chunk, self._chunk_no = 0, None, -1
        self._role_taken = self._given_up = False

    def _take_role(self) -> None:
        """At the epoch's first request: the writer if the epoch's lock is free, else a follower."""
        assert self.folder is not None
        self._role_taken = True
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = _try_lock(self.folder.with_suffix(".lock"))
        if self._lock is not None:
            self._evict()

    def end(self) -> None:
        """After the epoch's last step: write what is pending and release the epoch."""
        if self._lock is not None:
            self._flush()
            self._lock.close()
            self._lock = None
        self._pending = []

    # -- batches ------------------------------------------------------------------------------------------
    def logits(self, batch_index: torch.Tensor, compute: Any) -> torch.Tensor:
        """The teacher logits of this epoch's next batch, stored or from ``compute()`` (which runs the
        teacher and returns its logits). Stored logits are used only when they were taken on the same
        images (the batch's data indices are checked)."""
        if not self._role_taken:
            self._take_role()
        step = self.step
        self.step += 1
        stored = self._stored(step)
        if stored is not None and torch.equal(stored[0], batch_index.cpu()):
            return stored[1].to(batch_index.device, torch.float32)
        return self.record(step, batch_index, compute())

    def record(self, step: int, batch_index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep a live pass's logits for the stream (as the writer); returns the logits training uses."""
        logits = self._as_stored(logits)  # the writer trains on what the readers will read
        if self._lock is not None:
            if not self._pending:
                self._first_pending = step
            self._pending.append((batch_index.cpu(), logits.detach().to(self.dtype).cpu()))
            if len(self._pending) == CHUNK_BATCHES:
                self._flush()
        return logits

    def live(self, batch_index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """A pass the method needed live (features, stages): recorded for the stream, never replaced."""
        if not self._role_taken:
            self._take_role()
        step = self.step
        self.step += 1
        if self._lock is not None and self._pending_or_missing(step):
            return self.record(step, batch_index, logits)
        return self._as_stored(logits)

    def _as_stored(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the stream keeps them: every trial trains on these, whatever its role."""
        return logits.to(self.dtype).float() if self.dtype != torch.float32 else logits

    def _pending_or_missing(self, step: int) -> bool:
        return bool(self._pending) or not self._chunk_path(step // CHUNK_BATCHES).is_file()

    def _chunk_path(self, number: int) -> Path:
        assert self.folder is not None
        return self.folder / f"chunk_{number:05d}.pt"

    def _stored(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Step ``step``'s (indices, logits) from its chunk, waiting for a live writer; None to compute."""
        if self.folder is None:
            return None
        number, offset = divmod(step, CHUNK_BATCHES)
        if number != self._chunk_no:
            self._chunk, self._chunk_no = self._load(number), number
        chunk = self._chunk
        if chunk is None or offset >= len(chunk["index"]):
            return None
        return chunk["index"][offset], chunk["logits"][offset]

    def _load(self, number: int) -> dict[str, Any] | None:
        path = self._chunk_path(number)
        deadline = time.monotonic() + WAIT_S
        while not path.is_file():
            if self._lock is not None or self._pending or self._given_up:
                return None  # the writer (nobody else will write it), or done waiting this epoch
            self._lock = _try_lock(self.folder.with_suffix(".lock"))
            if self._lock is not None:  # the writer is gone (finished short, or died): take over
                return self._read(path) if path.is_file() else None
            if time.monotonic() > deadline:
                self._given_up = True
                return None
            time.sleep(POLL_S)
        chunk = self._read(path)
        if chunk is None and self._lock is not None:
            path.unlink(missing_ok=True)  # unreadable, and this trial writes the epoch: write it again
        return chunk

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable (e.g. truncated by a full disk): compute instead
            return None

    def _flush(self) -> None:
        if not self._pending or self.folder is None:
            return
        number = self._first_pending // CHUNK_BATCHES
        path = self._chunk_path(number)
        if not path.is_file():
            chunk = {"index": [i for i, _ in self._pending], "logits": [v for _, v in self._pending]}
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save(chunk, tmp)
            tmp.replace(path)
        self._pending = []

    def _evict(self) -> None:
        """Remove the oldest epochs of the stream folder until it fits ``teacher_stream_max_gb``."""
        epochs = sorted(
            (p for p in self.root.glob("*/epoch_*") if p.is_dir() and p != self.folder), key=lambda p: p.stat().st_mtime
        )
        total = sum(f.stat().st_size for f in self.root.rglob("chunk_*.pt"))
        for folder in epochs:
            if total <= self.max_bytes:
                break
            size = sum(f.stat().st_size for f in folder.glob("chunk_*.pt"))
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
                total -= size


def stream_size_bytes(root: str | Path) -> int:
    """Bytes the stream folder holds (for ``study status``)."""
    return sum(f.stat().st_size for f in Path(root).rglob("chunk_*.pt"))
