"""Live trial counts of the stages this driver runs (read by the progress line and the pending warning)."""

from __future__ import annotations

import threading


class Tally:
    """Trials running/done/errored per stage of this driver, kept by each stage's ``StudyProgress`` (any thread).

    Module-level so that it also counts for restored experiments (their callbacks are unpickled from
    ``tuner.pkl``); read by the study's periodic progress line and by ``PendingTrialWarning``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, stage: str, key: str, delta: int = 1) -> None:
        with self._lock:
            row = self.counts.setdefault(stage, {"running": 0, "done": 0, "errored": 0})
            row[key] = max(0, row[key] + delta)

    def stopped(self, stage: str) -> None:
        """The stage's experiment ended (finished, interrupted or failed): none of its trials runs any more."""
        with self._lock:
            if stage in self.counts:
                self.counts[stage]["running"] = 0

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: dict(v) for k, v in self.counts.items()}

    def running_elsewhere(self, stage: str) -> bool:
        with self._lock:
            return any(v["running"] for k, v in self.counts.items() if k != stage)


TALLY = Tally()
