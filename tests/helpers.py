"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from trainables.reporting import RunDirReporter


class StopAfter(RunDirReporter):
    """A reporter that simulates a crash right after epoch ``k`` was reported (and checkpointed)."""

    def __init__(self, run_dir, k: int) -> None:
        super().__init__(run_dir)
        self.k = k

    def __call__(self, metrics, checkpoint_dir):
        super().__call__(metrics, checkpoint_dir)
        if metrics["epoch"] == self.k:
            raise KeyboardInterrupt("simulated stop")
