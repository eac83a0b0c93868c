"""The teacher source: the one place a method gets the teacher's outputs for a training batch from.

The loop builds one per trial from the config and the method's ``teacher_plan``. Where the outputs come
from is the source's business, not the method's:

* live: a forward pass of the frozen network on the batch (the default);
* the budget cache (``label_once``): every training image labelled once before the first step, then
  read by index (``teacher_budget``, Comparative KD; see ``trainables.teacher.budget``);
* the shared store (``teacher_store: true``): per-image outputs of the un-augmented training split,
  computed once per study and shared through ``teacher_store_dir`` (``trainables.teacher.store``);
* the teacher stream (``teacher_stream_dir``): the logits of every augmented training batch, computed once
  by the trials of a study that share the batches and read by the others (``trainables.teacher.stream``);
* a trajectory schedule (``online``): the network's weights follow the teacher's checkpoints, switched
  at the start of each epoch (``trainables.teacher.trajectory``).

The source counts every image a method asks about (``teacher_calls``, served or computed) and enforces
``teacher_budget``; ``computed`` counts the images it actually ran the teacher on.
Diagnostics read ``model`` directly and are not counted. ``state()`` (the count and the budget cache)
travels in the trial checkpoint, so a resumed trial asks the teacher nothing it already asked.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..compile import eager
from ..data import DATA_KEYS, LoaderSplit, Split, TensorSplit, training_batches
from ..errors import TeacherBudgetExceeded
from .budget import label_once
from .network import FrozenTeacher, TeacherOutput, load_teacher_model
from .store import TeacherStore, load_or_compute, store_key, teacher_file_id
from .stream import TeacherStream, stream_enabled
from .trajectory import TrajectorySchedule

if TYPE_CHECKING:
    from ..data import Batch, Split

WANTS = ("logits", "features", "stages", "preact")


@dataclass(frozen=True)
class TeacherPlan:
    """How a method reads the teacher, declared by ``Method.teacher_plan(cfg)``.

    ``label_once``: the teacher labels each training image once, before training, and every step reads
    those logits (budgeted ``kd``, ``ckd``). ``trajectory``: the teacher follows this checkpoint schedule.
    """

    label_once: bool = False
    trajectory: TrajectorySchedule | None = None


@dataclass(frozen=True)
class LabelOnce:
    """What the budget cache is computed on: the training split, the view, the trial seed, the batch size."""

    split: Split
    view: str
    seed: int
    batch_size: int


class TeacherSource:
    """The teacher's outputs for training batches, counted, from the live network, a cache or a store."""

    def __init__(
        self,
        network: FrozenTeacher,
        *,
        budget: int | None = None,
        arch: str = "",
        trajectory: TrajectorySchedule | None = None,
        label_once: LabelOnce | None = None,
        weights_file: str | None = None,
    ) -> None:
        self.network = network
        self.budget = budget
        self.arch = arch
        self.calls = 0
        self.computed = 0
        self.weights_file = weights_file
        """The file the network's current weights came from (the stream's key hashes it)."""
        self.trajectory = trajectory
        self.label_once = label_once
        self.cache: TeacherStore | None = None
        """The budget cache: logits of every training image, read for every training batch."""
        self.store: TeacherStore | None = None
        """The shared store: per-image outputs, read only for batches that were not augmented."""
        self.stream: TeacherStream | None = None
        """The teacher stream: logits of each training batch, shared by the trials of a study."""
        self._loaded_point: int | None = None

    # -- what methods ask ------------------------------------------------------------------------------------
    def outputs(self, batch: Batch, want: str = "logits") -> TeacherOutput:
        """The teacher's outputs for a *training* batch.

        ``want`` is the most the method reads: ``logits``, ``features`` (the last map too), ``stages``
        (every stage; always a live pass) or ``preact`` (stages and their pre-ReLU maps; live, OFD).
        The source serves from its cache or store where those hold what
        is wanted and are valid for the batch, else runs the network (counted).
        """
        if want not in WANTS:
            raise ValueError(f"want must be one of {', '.join(WANTS)}; got '{want}'")
        if want == "logits" and self.cache is not None:
            return self.cache.lookup(batch.index)
        if want == "preact":
            return self._preact(batch)
        if want != "stages" and self.store is not None and self.store.serves(batch):
            if want == "logits" or self.store.features is not None:
                return self.store.lookup(batch.index)
        if self.stream is not None:
            return self._through_stream(batch, want)
        return self(batch.x)

    @eager
    def _through_stream(self, batch: Batch, want: str) -> TeacherOutput:
        """Logits from the stream where it has them; live passes are recorded for the other trials."""
        if want == "logits":
            self.count(int(batch.x.shape[0]))
            logits = self.stream.logits(batch.index, lambda: self._forward(batch.x).logits)
            return TeacherOutput(logits=logits, features=None, stages=[])
        out = self(batch.x)
        out.logits = self.stream.live(batch.index, out.logits)
        return out

    def _preact(self, batch: Batch) -> TeacherOutput:
        """A counted live pass with pre-ReLU stages; its logits are recorded on the stream like any live pass."""
        self.count(int(batch.x.shape[0]))
        self._computed(int(batch.x.shape[0]))
        out = self.network.forward(batch.x, preact=True)
        if self.stream is not None:
            out.logits = self.stream.live(batch.index, out.logits)
        return out

    def __call__(self, x: torch.Tensor) -> TeacherOutput:
        """A counted live pass on ``x`` (the budget counts every image)."""
        self.count(int(x.shape[0]))
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> TeacherOutput:
        self._computed(int(x.shape[0]))
        return self.network.forward(x)

    @eager
    def _computed(self, n: int) -> None:
        self.computed += n

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The teacher's frozen pooling + classifier on (student) features; gradients flow to the input."""
        return self.network.head(features)

    def classifier(self) -> nn.Linear:
        return self.network.classifier()

    @property
    def feature_channels(self) -> int:
        return self.network.feature_channels

    @property
    def model(self) -> nn.Module:
        """The frozen network itself: for shapes and diagnostics, whose passes are not teacher calls."""
        return self.network.model

    # -- counting ------------------------------------------------------------------------------------------
    @eager
    def count(self, n: int) -> None:
        """Add ``n`` images to the call count; exceeding a budget is an error, never silent.

        Kept out of ``torch.compile`` graphs: a traced counter is a guard that fails on every step.
        """
        if self.budget is not None and self.calls + n > self.budget:
            raise TeacherBudgetExceeded(
                f"teacher call budget of {self.budget} images exceeded ({self.calls} used, {n} more asked)"
            )
        self.calls += n

    # -- what the loop drives ------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Before epoch ``epoch``'s first step: load its trajectory checkpoint; build the budget cache once."""
        if self.trajectory is not None:
            index = self.trajectory.index(epoch)
            if index != self._loaded_point:
                self.network.load_weights(self.trajectory.points[index].path, self.arch)
                self.weights_file = str(self.trajectory.points[index].path)
                self._loaded_point = index
        if self.label_once is not None and self.cache is None:
            plan = self.label_once
            self.cache = label_once(self, plan.split, plan.view, plan.seed, plan.batch_size)
        if self.stream is not None and self.weights_file:
            self.stream.begin(epoch, self.weights_file)

    def on_train_epoch_end(self, epoch: int) -> None:
        """After the epoch's last step: the stream writes what is pending and frees the epoch."""
        if self.stream is not None:
            self.stream.end()

    def epoch_metrics(self, epoch: int) -> dict[str, Any]:
        """The schedule's metrics (``online/teacher_index``, ``online/teacher_epoch``) when there is one."""
        return self.trajectory.metrics(epoch) if self.trajectory is not None else {}

    def final_model(self, num_classes: int) -> nn.Module:
        """The final teacher's network: this one without a trajectory, else a fresh copy of the final point."""
        if self.trajectory is None:
            return self.network.model
        device = next(self.network.model.parameters()).device
        return load_teacher_model(self.arch, self.trajectory.final.path, num_classes).to(device)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"calls": self.calls, "computed": self.computed}
        if self.cache is not None:
            state["cache"] = self.cache.state()
        return state

    def load_state(self, state: Mapping[str, Any], legacy_cache: Mapping[str, Any] | None = None) -> None:
        """Restore ``state()``. ``legacy_cache`` is the budget cache as checkpoints before the teacher source
        kept it (a method's ``extra['teacher_cache']``: ``{'logits', 'view'}``)."""
        self.calls = int(state.get("calls", 0))
        self.computed = int(state.get("computed", self.calls))
        device = next(self.network.model.parameters()).device
        if state.get("cache") is not None:
            self.cache = TeacherStore.from_state(state["cache"]).to(device)
        elif legacy_cache and legacy_cache.get("logits") is not None and self.label_once is not None:
            logits = legacy_cache["logits"]
            valid = torch.ones(logits.shape[0], dtype=torch.bool)
            augmented = legacy_cache.get("view") == "augmented"
            self.cache = TeacherStore(logits, None, valid, augmented).to(device)


def build_source(cfg: Mapping[str, Any], plan: TeacherPlan, network: FrozenTeacher, train: Split) -> TeacherSource:
    """The trial's teacher source: the frozen ``network`` (on its device), the method's ``plan`` and the
    loop keys (``teacher_budget``, ``teacher_cache_view``, ``teacher_store``, ``teacher_store_dir``)."""
    once = None
    if plan.label_once:
        once = LabelOnce(train, str(cfg.get("teacher_cache_view", "augmented")), int(cfg.get("seed") or 0),
                         int(cfg["eval_batch_size"]))
    source = TeacherSource(
        network,
        budget=cfg.get("teacher_budget"),
        arch=str(cfg.get("teacher") or ""),
        trajectory=plan.trajectory,
        label_once=once,
        weights_file=str(cfg["teacher_checkpoint"]) if cfg.get("teacher_checkpoint") else None,
    )
    if cfg.get("teacher_store"):
        source.store = _shared_store(cfg, source, train)
    if stream_enabled(cfg) and _epochs_are_reproducible(train, cfg):
        device = next(network.model.parameters()).device
        # Look ahead only where an epoch's batches are a pure function of (seed, epoch): a DataLoader's
        # transforms draw from the process's global generator (0 workers) or start workers of their own.
        ahead = (lambda epoch: training_batches(train, cfg, epoch)) if isinstance(train, TensorSplit) else None
        source.stream = TeacherStream(cfg, device, network.autocast_dtype, ahead=ahead,
                                      teacher=lambda x: source._forward(x).logits)
    return source


def _epochs_are_reproducible(train: Split, cfg: Mapping[str, Any]) -> bool:
    """Whether an epoch's augmented batches are a function of (seed, epoch), as the stream's key assumes.

    A DataLoader with ``num_workers: 0`` augments from this process's global generator, so another trial
    (or a resumed one) would see other crops for the same indices: the stream stays off there, with a
    warning. With workers, each worker's generator is seeded from the loader's seeded generator.
    """
    if isinstance(train, LoaderSplit) and train.num_workers == 0:
        warnings.warn(
            "teacher stream off: with num_workers 0 a folder data set's augmentation is not a function of "
            "(seed, epoch), so stored teacher logits could belong to other crops; set num_workers >= 1 to share",
            stacklevel=2,
        )
        return False
    return True


def _shared_store(cfg: Mapping[str, Any], source: TeacherSource, train: Split) -> TeacherStore:
    """Teacher logits for the (un-augmented) training split, shared through ``teacher_store_dir`` if set."""
    key = store_key(
        teacher=cfg["teacher"],
        teacher_file=teacher_file_id(cfg["teacher_checkpoint"]),
        data={k: cfg[k] for k in DATA_KEYS if k != "num_workers"},
        split="train",
        amp=str(source.network.autocast_dtype),
        keep="logits",
    )
    return load_or_compute(source, train, key, cfg.get("teacher_store_dir"), batch_size=int(cfg["eval_batch_size"]))
