"""The teacher-call budget: each training image labelled once, before training (Comparative KD).

In the few-teacher-inference setting of Comparative KD (Wilf et al., arXiv 2311.02253) the teacher may
be asked about n images only. A budgeted method's teacher source runs the teacher exactly once on each
image of the training split (which ``train_subset`` cuts down to those n images) before its first
training step, keeps the logits by data index, and never calls the teacher again: training reads the
cache only.

Which view of each image the teacher sees is ``teacher_cache_view``: ``augmented`` (default, as
Comparative KD's official code, which labels its cache through the training transform: one random
crop+flip per image, drawn from a generator seeded by the trial seed, so the cache is the same on every
run of the trial) or ``clean`` (the un-augmented image, the canonical view every crop of it is compared
against). The cache is saved in the trial checkpoint, so a
resumed trial does not ask the teacher again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data import Split
from ..errors import ConfigError
from .store import CountingTeacher, TeacherStore, compute_teacher_store

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


def label_once(teacher: CountingTeacher, split: Split, view: str, seed: int, batch_size: int) -> TeacherStore:
    """The teacher's logits for every image of ``split`` in one pass (fixed order): the budget cache.

    ``view: augmented`` draws one crop+flip per image from a generator seeded by the trial ``seed``.
    """
    if view not in CACHE_VIEWS:
        raise ConfigError(f"teacher_cache_view must be one of {', '.join(CACHE_VIEWS)}; got '{view}'")
    augment = view == "augmented"
    store = compute_teacher_store(
        teacher, split, batch_size=batch_size, augment=augment, seed=int(seed) * 1_000_033 + 7 if augment else None
    )
    if store.num_cached != len(split):
        raise RuntimeError(f"teacher cache covers {store.num_cached} of {len(split)} training examples")
    return store
