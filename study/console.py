"""What the study prints around Ray's output: Ray's TensorBoard hint silenced, the study dir's command instead."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


class _WithoutLines:
    """A stdout proxy that drops whole lines starting with ``prefix`` (everything else passes unchanged)."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        self._stream, self._prefix, self._partial = stream, prefix, ""

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if not line.startswith(self._prefix):
                self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        held = self._partial.startswith(self._prefix) or self._prefix.startswith(self._partial)
        if self._partial and not held:  # a line that may still become the dropped one waits for its end
            self._stream.write(self._partial)
            self._partial = ""
        self._stream.flush()

    def drain(self) -> None:
        if self._partial and not self._partial.startswith(self._prefix):
            self._stream.write(self._partial)
        self._partial = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


RAY_TENSORBOARD_HINT = "To visualize your results with TensorBoard"


@contextmanager
def without_ray_tensorboard_hint() -> Iterator[None]:
    """Silence Ray's per-experiment TensorBoard line: it names a temporary folder of the Ray session.

    The trials' event files are in the study dir; the study prints that command once instead.
    """
    original = sys.stdout
    proxy = _WithoutLines(original, RAY_TENSORBOARD_HINT)
    sys.stdout = proxy
    try:
        yield
    finally:
        proxy.drain()
        sys.stdout = original


def tensorboard_hint(study_dir: Path) -> str | None:
    """The command that shows the trials' TensorBoard event files (Ray writes them when tensorboardX is there)."""
    if importlib.util.find_spec("tensorboardX") is None:
        return None
    return f"TensorBoard: tensorboard --logdir {study_dir}"
