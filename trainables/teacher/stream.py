"""The teacher stream: the teacher's logits on every augmented training batch, computed once per study.

Augmentation is a pure function of (trial seed, epoch), so every trial of a search stage (and of a grid
that shares a seed) shows the teacher exactly the same batches in the same order. The stream keeps the
teacher's logits of each batch in chunks of ``CHUNK_BATCHES`` batches,
``<teacher_stream_dir>/<key>/epoch_XXXX/chunk_XXXXX.pt`` (written to a temporary name and renamed: a
half-written chunk is never read), and a trial that finds a chunk reads it instead of running the teacher.
The key covers what the logits depend on: the teacher file's content (the trajectory checkpoint in use for
``online``), the data keys, the trial seed, the batch size, the augmentation, the precision, the memory
format, ``compile``, the device type, the thread count, the torch version and the stored dtype (the last
few change the rounding of the teacher's pass).

One writer per chunk (a file lock per chunk). A trial that reaches a chunk nobody has written takes its
lock and writes it from the live teacher passes of its own steps. A trial that finds the chunk's lock
taken does not idle: it takes the next chunk of the epoch that is neither written nor taken and computes
the teacher on it ahead (the epoch's batches are ``trainables.data.training_batches``, a function of
(seed, epoch)), then looks again; with nothing left to take it polls, and after ``WAIT_S`` seconds of
polling it computes that chunk's batches itself without writing them. So two trials on one epoch share its
teacher passes between them instead of one computing and the other waiting, and a lock whose holder died
(the kernel frees it) is simply taken over. Methods that need the teacher's features too (computed live)
still write the chunks they are first to reach. Chunks already written are reused after a kill.
``teacher_stream_max_gb`` bounds the folder: before a trial first writes in an epoch, the oldest epochs
(none that a trial is writing) are evicted until it fits.

Exact: a reader gets the very tensors the writer trained on or computed ahead on the same batches (stored
in float32 by default; with ``teacher_stream_dtype: bfloat16`` every trial, writer included, trains on the
rounded logits), so on the same device, precision and thread count a reading trial trains bit-identically
to one that computes the teacher.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import DATA_KEYS
from ..errors import ConfigError
from .store import store_key

if TYPE_CHECKING:
    from ..data import Batch

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

    path.parent.mkdir(parents=True, exist_ok=True)  # (again, if the epoch was evicted meanwhile)
    fh = open(path, "a")  # held until released
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def _release(lock: Any, path: Path) -> None:
    """Free a chunk's lock and remove its file: the chunk is written (or not to be), so whoever takes a lock
    on that name later finds the chunk first and reads it."""
    path.unlink(missing_ok=True)
    lock.close()


def _busy(folder: Path) -> bool:
    """Whether a trial holds a chunk lock of this epoch folder (it is writing there: not evicted)."""
    for path in folder.glob("chunk_*.lock"):
        lock = _try_lock(path)
        if lock is None:
            return True
        lock.close()
    return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")  # gone meanwhile (another trial evicted it)


Ahead = Callable[[int], Iterator["Batch"]]
"""The training batches of an epoch, in the loop's order (``trainables.data.training_batches``)."""


class TeacherStream:
    """One trial's view of the stream: which epoch, which step, which chunk it writes."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        device: torch.device,
        amp_dtype: torch.dtype | None,
        *,
        ahead: Ahead | None = None,
        teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``ahead(epoch)`` and ``teacher(x)`` (the teacher's logits of images ``x``, a counted pass) let a
        trial that waits for another's chunk compute a later chunk meanwhile; without them it only waits."""
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
        self._ahead_source = ahead
        self._teacher = teacher
        self.folder: Path | None = None
        self.epoch = 0
        self._reset()

    def _reset(self) -> None:
        self.step = 0
        self._chunk: dict[str, Any] | None = None
        """The chunk holding the current step's logits (read), or None (computed live)."""
        self._chunk_no = -1
        self._writing: tuple[int, Any] | None = None
        """(chunk number, its lock) while this trial writes a chunk from its own steps."""
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._ahead: Iterator[Batch] | None = None
        self._ahead_step = 0
        self._end_chunk: int | None = None
        """The first chunk number past the epoch, once the look-ahead ran out of batches."""
        self._evicted = False

    # -- epochs -------------------------------------------------------------------------------------------
    def begin(self, epoch: int, teacher_file: str | Path) -> None:
        """Start epoch ``epoch`` with the teacher weights of ``teacher_file``."""
        self.end()
        key = store_key(kind="stream", teacher_hash=file_hash(teacher_file), **self.parts)
        self.folder = self.root / key / f"epoch_{epoch:04d}"
        self.epoch = epoch
        self._reset()

    def end(self) -> None:
        """After the epoch's last step: write the chunk this trial was writing, if any."""
        self._flush()
        self._ahead = None

    # -- batches ------------------------------------------------------------------------------------------
    def logits(self, batch_index: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The teacher logits of this epoch's next batch, stored or from ``compute()`` (which runs the
        teacher and returns its logits). Stored logits are used only when they were taken on the same
        images (the batch's data indices are checked)."""
        step = self._next_step(wait=True)
        stored = self._stored(step)
        if stored is not None and torch.equal(stored[0], batch_index.cpu()):
            return stored[1].to(batch_index.device, torch.float32)
        return self._record(batch_index, compute())

    def live(self, batch_index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """A pass the method needed live (features, stages): written where this trial is first to reach the
        chunk, never replaced."""
        self._next_step(wait=False)
        return self._record(batch_index, logits)

    def _next_step(self, wait: bool) -> int:
        step = self.step
        self.step += 1
        number, offset = divmod(step, CHUNK_BATCHES)
        if self.folder is not None and (offset == 0 or number != self._chunk_no):
            self._flush()
            self._chunk_no = number
            self._chunk = self._open_chunk(number, wait)
        return step

    def _record(self, batch_index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep a live pass's logits for the chunk this trial writes; returns the logits training uses."""
        logits = self._as_stored(logits)  # the writer trains on what the readers will read
        if self._writing is not None:
            self._pending.append((batch_index.cpu(), logits.detach().to(self.dtype).cpu()))
            if len(self._pending) == CHUNK_BATCHES:
                self._flush()
        return logits

    def _as_stored(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the stream keeps them: every trial trains on these, whatever its role."""
        return logits.to(self.dtype).float() if self.dtype != torch.float32 else logits

    def _stored(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        offset = step % CHUNK_BATCHES
        chunk = self._chunk
        if chunk is None or offset >= len(chunk["index"]):
            return None
        return chunk["index"][offset], chunk["logits"][offset]

    # -- chunks -------------------------------------------------------------------------------------------
    def _chunk_path(self, number: int) -> Path:
        assert self.folder is not None
        return self.folder / f"chunk_{number:05d}.pt"

    def _lock_path(self, number: int) -> Path:
        assert self.folder is not None
        return self.folder / f"chunk_{number:05d}.lock"

    def _open_chunk(self, number: int, wait: bool) -> dict[str, Any] | None:
        """Chunk ``number`` read from its file; or None to compute its steps live, as its writer when this
        trial took its lock. ``wait``: while another trial holds the lock, compute ahead or poll for it."""
        path = self._chunk_path(number)
        deadline = time.monotonic() + WAIT_S
        while True:
            if path.is_file():
                chunk = self._read(path) if wait else None
                if chunk is not None or not wait:
                    return chunk
            lock = _try_lock(self._lock_path(number))
            if lock is not None:
                chunk = self._read(path) if path.is_file() else None  # written just now?
                if chunk is not None:
                    _release(lock, self._lock_path(number))
                    return chunk
                path.unlink(missing_ok=True)  # unreadable (cut short): this trial writes it again
                self._evict_once()
                self._writing = (number, lock)
                return None
            if not wait or time.monotonic() > deadline:
                return None  # another trial is computing it; so does this one, without writing
            if self._help(number):
                deadline = time.monotonic() + WAIT_S  # the timeout is for a stuck writer, not for helping
            else:
                time.sleep(POLL_S)

    def _help(self, number: int) -> bool:
        """While chunk ``number`` is another trial's: compute the first later chunk nobody has (True), or
        find none (False)."""
        if self._ahead_source is None or self._teacher is None:
            return False
        candidate = number + 1
        while self._end_chunk is None or candidate < self._end_chunk:
            path, lock_path = self._chunk_path(candidate), self._lock_path(candidate)
            lock = None if path.is_file() else _try_lock(lock_path)
            if lock is not None:
                if path.is_file():
                    _release(lock, lock_path)
                else:
                    batches = self._batches_of(candidate)
                    if not batches:
                        self._end_chunk = candidate
                        _release(lock, lock_path)
                        return False
                    self._evict_once()
                    logits = [self._teacher(b.x).to(self.dtype).cpu() for b in batches]
                    self._write(path, [b.index.cpu() for b in batches], logits)
                    _release(lock, lock_path)
                    return True
            candidate += 1
        return False

    def _batches_of(self, number: int) -> list[Batch]:
        """The epoch's batches of chunk ``number``, from the look-ahead iterator (restarted if it is past)."""
        assert self._ahead_source is not None
        first = number * CHUNK_BATCHES
        if self._ahead is None or self._ahead_step > first:
            self._ahead, self._ahead_step = self._ahead_source(self.epoch), 0
        for _ in itertools.islice(self._ahead, first - self._ahead_step):
            pass
        self._ahead_step = first
        batches = list(itertools.islice(self._ahead, CHUNK_BATCHES))
        self._ahead_step += len(batches)
        return batches

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable (cut short by a full disk, evicted meanwhile): compute
            return None

    @staticmethod
    def _write(path: Path, index: list[torch.Tensor], logits: list[torch.Tensor]) -> None:
        """Atomically: a temporary name, then a rename. A failed write (full disk) costs only the sharing."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"index": index, "logits": logits}, tmp)
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _flush(self) -> None:
        """Write the chunk this trial was writing (what it has of it) and free its lock."""
        if self._writing is None:
            return
        number, lock = self._writing
        self._writing = None
        if self._pending:
            self._write(self._chunk_path(number), [i for i, _ in self._pending], [v for _, v in self._pending])
        self._pending = []
        _release(lock, self._lock_path(number))

    def _evict_once(self) -> None:
        if not self._evicted:
            self._evicted = True
            self._evict()

    def _evict(self) -> None:
        """Remove the oldest epochs of the stream folder until it fits ``teacher_stream_max_gb``."""
        epochs = sorted((p for p in self.root.glob("*/epoch_*") if p.is_dir() and p != self.folder), key=_mtime)
        total = stream_size_bytes(self.root)
        for folder in epochs:
            if total <= self.max_bytes:
                break
            if _busy(folder):
                continue
            size = stream_size_bytes(folder)
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)
                total -= size


def stream_size_bytes(root: str | Path) -> int:
    """Bytes of the chunks under ``root`` (a stream folder or one epoch of it)."""
    total = 0
    for f in Path(root).rglob("chunk_*.pt"):
        with contextlib.suppress(OSError):  # evicted meanwhile
            total += f.stat().st_size
    return total
