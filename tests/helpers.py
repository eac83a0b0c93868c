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


def straight_and_resumed(cfg: dict, root, k: int = 1) -> tuple[RunDirReporter, RunDirReporter]:
    """Train ``cfg`` uninterrupted, and again stopped after epoch ``k`` then resumed from that checkpoint:
    the two reporters (``checkpoint_dir``, ``history``) for an exact-resume comparison."""
    import pytest

    from trainables.loop import train

    straight = RunDirReporter(root / "straight")
    train(cfg, reporter=straight, workdir=root / "straight")
    first = StopAfter(root / "broken", k=k)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first, workdir=root / "broken")
    resumed = RunDirReporter(root / "broken")
    train(cfg, reporter=resumed, resume_from=first.checkpoint_dir, workdir=root / "broken")
    return straight, resumed
