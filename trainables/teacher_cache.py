"""Teacher logits computed once per training image and served from a cache (the teacher-call budget).

In the few-teacher-inference setting of Comparative KD (Wilf et al., arXiv 2311.02253) the teacher may
be asked about n images only. A cached method runs the teacher exactly once on each image of the
training split (which ``train_subset`` cuts down to those n images) before its first training step,
keeps the logits by data index, and never calls the teacher again: training reads the cache only.

Which view of each image the teacher sees is ``teacher_cache_view``: ``clean`` (default: the
un-augmented image, the canonical view every augmented crop of it is compared against) or
``augmented`` (one random crop+flip per image, drawn from a generator seeded by the trial seed, so
the cache is the same on every run of the trial). The cache is saved in the trial checkpoint, so a
resumed trial does not ask the teacher again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .data import Split
from .errors import ConfigError
from .teacher import FrozenTeacher

CACHE_VIEWS = ("clean", "augmented")


def validate_budget(cfg: Mapping[str, Any]) -> None:
    """A budget of n teacher calls trains on n images: ``train_subset`` must be set and fit in it."""
    budget, subset = cfg.get("teacher_budget"), cfg.get("train_subset")
    if budget is None:
        return
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ConfigError(f"teacher_budget must be a positive integer (images the teacher may see), got {budget!r}")
    if subset is None:
        raise ConfigError(
            f"teacher_budget {budget} needs train_subset (the images the teacher labels once); "
            f"set train_subset: {budget}"
        )
    if int(subset) > budget:
        raise ConfigError(
            f"train_subset {subset} exceeds teacher_budget {budget}: the teacher sees each training image once; "
            f"set train_subset <= {budget}"
        )


class TeacherLogitCache:
    """Teacher logits for every example of a split, indexed like ``Batch.index``."""

    def __init__(self, view: str = "clean", seed: int = 0) -> None:
        if view not in CACHE_VIEWS:
            raise ConfigError(f"teacher_cache_view must be one of {', '.join(CACHE_VIEWS)}; got '{view}'")
        self.view = view
        self.seed = int(seed)
        self.logits: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self.logits is not None

    @torch.no_grad()
    def build(self, teacher: FrozenTeacher, split: Split, batch_size: int) -> None:
        """Run the teacher once on each example of ``split`` (one pass, fixed order) and keep its logits."""
        augment = self.view == "augmented"
        generator = torch.Generator().manual_seed(self.seed * 1_000_033 + 7) if augment else None
        n = len(split)
        chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        for batch in split.batches(batch_size, shuffle=False, augment=augment, generator=generator):
            chunks.append((batch.index, teacher(batch.x).logits))
        index = torch.cat([i for i, _ in chunks])
        values = torch.cat([v for _, v in chunks])
        logits = torch.full((n, values.shape[1]), float("nan"), device=values.device)
        logits[index.to(values.device)] = values
        if int(index.numel()) != n or bool(torch.isnan(logits).any()):
            raise RuntimeError(f"teacher cache covers {int(index.numel())} of {n} training examples")
        self.logits = logits

    def ensure(self, teacher: FrozenTeacher, split: Split, batch_size: int) -> None:
        """Build once; a restored or already built cache makes no teacher call."""
        if not self.ready:
            self.build(teacher, split, batch_size)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Cached logits of the examples ``index`` (a batch's data indices)."""
        if self.logits is None:
            raise RuntimeError("teacher cache used before it was built (build it in on_epoch_start)")
        return self.logits[index.to(self.logits.device)]

    def state(self) -> dict[str, Any]:
        return {"logits": None if self.logits is None else self.logits.cpu(), "view": self.view}

    def load_state(self, state: Mapping[str, Any], device: torch.device) -> None:
        logits = state.get("logits")
        self.logits = None if logits is None else logits.to(device)


def cache_for(cfg: Mapping[str, Any]) -> TeacherLogitCache:
    return TeacherLogitCache(cfg.get("teacher_cache_view", "clean"), int(cfg.get("seed") or 0))
