"""One driver per study dir: an ``flock`` on ``<study dir>/.lock`` that dies with its holder."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainables.errors import PlatformError

LOCK_FILE = ".lock"


class StudyBusy(PlatformError):
    """Another ``python -m study`` drives this study dir right now."""


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold ``<study dir>/.lock`` (``flock``) while this process drives the study; refuse when another does.

    The kernel releases an ``flock`` when its holder dies, so a killed driver never blocks the next one. The
    file names the holder (pid and host) for the message.
    """
    fd = os.open(Path(study_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StudyBusy(f"study dir {study_dir} is in use by another `python -m study` ({holder}): wait for it "
                        "to end or stop it, then resume") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
