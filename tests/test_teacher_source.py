"""The teacher source: where a batch's teacher outputs come from, what is counted, what a checkpoint keeps.

Real torch on the embedded digits with a small seeded (untrained) teacher: the routing and the counting
do not depend on what the teacher learned.
"""

from __future__ import annotations

import pytest
import torch

from trainables import models
from trainables.data import build_data
from trainables.errors import TeacherBudgetExceeded
from trainables.teacher import FrozenTeacher, TeacherSource
from trainables.teacher.source import LabelOnce
from trainables.teacher.store import compute_teacher_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    return build_data({"dataset": "digits", "train_subset": 48}).train


def _source(**kwargs) -> TeacherSource:
    torch.manual_seed(0)
    return TeacherSource(FrozenTeacher(models.create("resnet8", num_classes=10)), **kwargs)


def _batch(split, augment: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return next(split.batches(16, shuffle=True, augment=augment, generator=gen))


def test_live_store_and_wants(split) -> None:
    source = _source()
    clean, augmented = _batch(split, False), _batch(split, True)
    live = source.outputs(clean)
    assert source.calls == 16 and len(live.stages) > 1
    assert torch.equal(live.logits, source.network.forward(clean.x).logits)  # network passes are not counted
    assert source.calls == 16
    source.store = compute_teacher_store(source, split, batch_size=16)  # logits only
    assert source.calls == 16 + len(split)
    calls = source.calls
    served = source.outputs(clean)
    assert source.calls == calls and served.stages == [] and served.features is None
    torch.testing.assert_close(served.logits, live.logits, rtol=1e-4, atol=1e-5)
    assert len(source.outputs(clean, want="stages").stages) > 1  # stages: always a live pass
    assert source.outputs(clean, want="features").features is not None  # the store holds no features
    source.outputs(augmented)  # an augmented batch is never served from the store
    assert source.calls == calls + 3 * 16
    with pytest.raises(ValueError, match="want must be one of"):
        source.outputs(clean, want="everything")


def test_budget_cache_labels_each_image_once_and_serves_every_view(split) -> None:
    source = _source(budget=len(split), label_once=LabelOnce(split, "clean", 0, 32))
    source.on_epoch_start(0)
    assert source.calls == len(split) and source.cache is not None
    source.on_epoch_start(1)  # built once
    for augment in (False, True):
        batch = _batch(split, augment)
        assert torch.equal(source.outputs(batch).logits, source.cache.logits[batch.index])
    assert source.calls == len(split)
    with pytest.raises(TeacherBudgetExceeded, match=f"budget of {len(split)} images exceeded"):
        source.outputs(_batch(split, True), want="stages")  # a live pass beyond the budget


def test_state_round_trip_and_a_checkpoint_from_before_the_source(split) -> None:
    plan = LabelOnce(split, "augmented", 3, 32)
    first = _source(label_once=plan)
    first.on_epoch_start(0)
    state = first.state()
    assert state["calls"] == len(split) and state["cache"]["augmented"] is True
    again = _source(label_once=plan)
    again.load_state(state)
    again.on_epoch_start(0)  # restored: no teacher call
    assert again.calls == len(split) and torch.equal(again.cache.logits, first.cache.logits)
    # checkpoints written before the teacher source kept the budget cache in the method's extra state
    legacy = _source(label_once=plan)
    legacy.load_state({"calls": len(split)}, legacy_cache={"logits": first.cache.logits.clone(), "view": "augmented"})
    legacy.on_epoch_start(0)
    assert legacy.calls == len(split) and torch.equal(legacy.cache.logits, first.cache.logits)
    assert "cache" not in _source().state()  # no budget cache, nothing but the count
