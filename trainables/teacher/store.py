"""Teacher outputs computed once per example of a split, stored by index, shareable through a folder.

Valid wherever the teacher would see the same input each time it meets an example:

* a split read without augmentation (``augment: false``): every epoch repeats the same images, so a
  teacher forward per batch is wasted work; ``teacher_store: true`` serves them from here;
* one fixed view per example (clean, or one seeded augmentation): the few-teacher-calls setting of
  Comparative KD, where the teacher runs once on each of n training images and training reads only
  these outputs (the budget cache of ``trainables.teacher.source``).

Computing a store costs one counted teacher call per example, so budgets hold. With a ``directory`` it
is written once to ``<directory>/<key>.pt`` and every trial of a study that needs the same outputs
(same teacher file, data, split, precision, augmentation seed) loads it instead of recomputing; a file
lock makes concurrent trials wait for the first one rather than race. A trial that loads a shared store
is charged the same calls it would have made computing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..data import Split
from .network import TeacherOutput

KEEP_CHOICES = ("logits", "features")
CACHE_VERSION = 1


class CountingTeacher(Protocol):
    """What computing a store needs: a counted forward pass and the counter itself (a ``TeacherSource``)."""

    def __call__(self, x: torch.Tensor) -> TeacherOutput: ...

    def count(self, n: int) -> None: ...


@dataclass
class TeacherStore:
    """Teacher logits (and optionally the last feature map) for examples 0..N-1 of one split.

    ``valid[i]`` says whether example i was computed (a cache may cover a subset, e.g. a budget).
    Cached outputs carry no intermediate stages: methods that need them must call the teacher.
    """

    logits: torch.Tensor
    features: torch.Tensor | None
    valid: torch.Tensor
    augmented: bool
    key: str = ""

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_cached(self) -> int:
        return int(self.valid.sum().item())

    def to(self, device: torch.device | str) -> TeacherStore:
        self.logits = self.logits.to(device)
        self.valid = self.valid.to(device)
        if self.features is not None:
            self.features = self.features.to(device)
        return self

    def serves(self, batch: Any) -> bool:
        """True when ``batch`` shows the teacher exactly what this cache was computed on (no fresh augmentation)."""
        return not self.augmented and not getattr(batch, "augmented", True)

    def lookup(self, index: torch.Tensor) -> TeacherOutput:
        """Cached outputs for split indices ``index``, as a ``TeacherOutput`` (``stages`` is empty)."""
        index = index.to(self.logits.device)
        features = self.features[index].float() if self.features is not None else None
        return TeacherOutput(logits=self.logits[index], features=features, stages=[])

    def state(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "key": self.key,
            "augmented": self.augmented,
            "logits": self.logits.cpu(),
            "features": self.features.cpu() if self.features is not None else None,
            "valid": self.valid.cpu(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TeacherStore:
        return cls(
            logits=state["logits"],
            features=state["features"],
            valid=state["valid"],
            augmented=bool(state["augmented"]),
            key=str(state.get("key", "")),
        )


def compute_teacher_store(
    teacher: CountingTeacher,
    split: Split,
    *,
    batch_size: int = 256,
    keep: str = "logits",
    augment: bool = False,
    seed: int | None = 0,
    indices: torch.Tensor | None = None,
    features_dtype: torch.dtype = torch.float32,
) -> TeacherStore:
    """Run the teacher once over ``split`` (or only the examples in ``indices``) and keep its outputs.

    ``augment=True`` draws one augmentation per example from ``seed`` (the split's own augmentation, so
    the same law as training). ``seed=None`` passes no generator to the split (a loader-backed split then
    seeds its workers from the global RNG, as a plain evaluation pass does). Every computed example is one
    counted teacher call. ``features_dtype``
    lets a large feature cache be kept in bf16 (CIFAR-100 train, resnet32x4: 3.3 GB in fp32).
    """
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {', '.join(KEEP_CHOICES)}; got '{keep}'")
    n = len(split)
    device = split.device
    wanted = torch.zeros(n, dtype=torch.bool)
    if indices is None:
        wanted[:] = True
    else:
        wanted[indices.cpu().long()] = True
    logits = features = None
    valid = torch.zeros(n, dtype=torch.bool, device=device)
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    for batch in split.batches(batch_size, shuffle=False, augment=augment, generator=generator,
                               drop_last_single=False):
        take = wanted[batch.index.cpu()]
        if not bool(take.any()):
            continue
        if bool(take.all()):
            idx, out = batch.index, teacher(batch.x)
        else:
            take_dev = take.to(batch.index.device)
            idx, out = batch.index[take_dev], teacher(batch.x[take_dev])
        if logits is None:
            logits = torch.zeros((n, out.logits.shape[1]), dtype=torch.float32, device=device)
            if keep == "features":
                features = torch.zeros((n, *out.features.shape[1:]), dtype=features_dtype, device=device)
        logits[idx] = out.logits
        if features is not None:
            features[idx] = out.features.to(features_dtype)
        valid[idx] = True
    if logits is None:
        raise ValueError("teacher cache: no example selected (empty split or empty indices)")
    return TeacherStore(logits=logits, features=features, valid=valid, augmented=augment)


def store_key(**parts: Any) -> str:
    """A stable short hash of everything the cached outputs depend on (JSON-serialisable parts)."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def teacher_file_id(path: str | Path) -> dict[str, Any]:
    """Identify a teacher checkpoint by absolute path, size and modification time (cheap, no hashing)."""
    p = Path(path).absolute()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); elsewhere no lock, and the atomic rename keeps the file whole."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_or_compute(
    teacher: CountingTeacher,
    split: Split,
    key: str,
    directory: str | Path | None = None,
    *,
    charge_calls: bool = True,
    **compute_kwargs: Any,
) -> TeacherStore:
    """The cache for ``key``: loaded from ``directory`` when a trial already computed it, else computed.

    ``key`` must change whenever the outputs would (use ``store_key`` over the teacher file id, the data
    keys, the split name, the autocast dtype, ``keep``, ``augment`` and ``seed``). Without a directory the
    cache lives in this trial only. ``charge_calls`` adds the examples of a loaded cache to the teacher's
    call count, so ``teacher_calls`` and a budget read the same whether a trial computed or loaded it.
    """
    if directory is None:
        cache = compute_teacher_store(teacher, split, **compute_kwargs)
        cache.key = key
        return cache
    folder = Path(directory).expanduser().absolute()
    path = folder / f"{key}.pt"
    with _file_lock(folder / f"{key}.lock"):
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            cache = TeacherStore.from_state(state)
            if len(cache) != len(split):
                raise ValueError(f"teacher cache {path} holds {len(cache)} examples, the split has {len(split)}")
            if charge_calls:
                teacher.count(cache.num_cached)
            return cache.to(split.device)
        cache = compute_teacher_store(teacher, split, **compute_kwargs)
        cache.key = key
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(cache.state(), tmp)
        tmp.replace(path)
        return cache
