"""Every Ray internal kdstudy relies on, in one place, checked once before a stage starts.

Resume safety needs three facts that Ray exposes only on its storage context (``StorageContext``, a
developer API that may change between minor versions): the trial's folder on storage (a restarted trial
scans it for its newest complete checkpoint and the worker writes ``epoch_log.jsonl`` there), the local
folder where Tune stages the experiment's state files before copying them (``StateBackup`` copies them
from there), and the storage filesystem (those scans work only on a local or mounted one). ``check``
fails with one line naming the Ray version and the missing piece instead of degrading silently; the
accessors below are the only code that touches those internals.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

TESTED_RAY = ("2.60",)
"""Ray minor versions the resume tests passed on (requirements.txt admits exactly these)."""

STORAGE_CONTEXT = "ray.train._internal.storage.StorageContext"
STORAGE_ATTRIBUTES = ("storage_filesystem", "trial_fs_path", "experiment_fs_path", "experiment_driver_staging_path")


class RayCompatError(RuntimeError):
    """The installed Ray lacks an internal that resume safety depends on."""


def _version() -> str:
    import ray

    return ray.__version__


def _fail(what: str) -> RayCompatError:
    return RayCompatError(f"Ray {_version()}: {what}; kdstudy's resume depends on it and is tested with Ray "
                          f"{', '.join(v + '.x' for v in TESTED_RAY)} (install one: see requirements.txt)")


def check_storage(storage: Any) -> None:
    """Raise ``RayCompatError`` (one line) if ``storage`` lacks an attribute kdstudy reads from a storage context."""
    names = set(dir(storage))  # dir() lists properties without evaluating them
    for name in STORAGE_ATTRIBUTES:
        if name not in names:
            raise _fail(f"{STORAGE_CONTEXT} has no attribute '{name}'")


@functools.cache
def check() -> None:
    """The start-up check: every internal used below exists in the installed Ray (cached per process)."""
    from ray import tune

    try:
        from ray.train._internal.storage import StorageContext
    except ImportError:
        raise _fail(f"{STORAGE_CONTEXT} cannot be imported") from None
    if not callable(getattr(tune.TuneContext, "get_storage", None)):
        raise _fail("ray.tune.TuneContext has no method 'get_storage'")
    with tempfile.TemporaryDirectory(prefix="kd-raycheck-") as tmp:
        check_storage(StorageContext(storage_path=tmp, experiment_dir_name="check"))
    if not any(_version() == v or _version().startswith(v + ".") for v in TESTED_RAY):
        warnings.warn(f"Ray {_version()} is not a tested version (tested: {', '.join(TESTED_RAY)}); resume "
                      "guarantees are only tested there", stacklevel=2)


def _local(storage: Any) -> bool:
    return type(storage.storage_filesystem).__name__ == "LocalFileSystem"


def trial_storage_path() -> Path | None:
    """Inside a trial: its folder on storage; None outside a Tune session or on remote (URI) storage."""
    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # outside a session Ray warns and returns None
        storage = tune.get_context().get_storage()
    if storage is None:
        return None
    check_storage(storage)
    return Path(storage.trial_fs_path) if _local(storage) else None


def experiment_paths(trial: Any) -> tuple[Path, Path] | None:
    """On the driver, from any trial of an experiment: (Tune's local staging folder of its state files, the
    experiment folder on storage); None on remote storage."""
    storage = getattr(trial, "storage", None)
    if storage is None:
        raise _fail("ray.tune.experiment.Trial has no attribute 'storage'")
    check_storage(storage)
    if not _local(storage):
        return None
    return Path(storage.experiment_driver_staging_path), Path(storage.experiment_fs_path)


# -- one stop event for every Tune run of this driver ---------------------------------------------------------
SIGNAL_SETUP = "ray.tune.tune._setup_signal_catching"


def share_stop_event(event: Any) -> None:
    """Make every ``tune.run`` of this process (each stage's ``Tuner.fit``, in any thread) stop on ``event``.

    Tune installs its Ctrl-C handler only when ``tune.run`` runs in the main thread; stages fitted in worker
    threads get a private event nobody sets. Tune looks ``_setup_signal_catching`` up at each call, so
    replacing it hands every run this one event: the study's own SIGINT handler sets it and each run then
    stops as on its own Ctrl-C (last experiment snapshot, unfinished trials left to resume).
    """
    import ray.tune.tune as tune_module

    if not callable(getattr(tune_module, "_setup_signal_catching", None)):
        raise _fail(f"{SIGNAL_SETUP} does not exist")
    tune_module._setup_signal_catching = lambda: event


# -- Tune's trainable registry, shared by the stages of one driver --------------------------------------------------
REGISTRY = "ray.tune.registry._global_registry"
REGISTRY_METHODS = ("register", "flush_values", "unregister", "unregister_all")


def serialise_registry(registry: Any = None) -> None:
    """Make Tune's trainable registry (``_global_registry`` unless given) safe for stages started together.

    Each ``Tuner.fit`` registers its trainable when it starts (``Experiment.register_if_needed``); the
    registry adds it to a dict and then flushes that dict to Ray's key-value store by iterating over it, with
    no lock. Two stages starting at the same moment in worker threads (the students' stages of one teacher,
    released together) so crash one of them with "dictionary changed size during iteration". One lock
    around each of those methods (re-entrant: ``register`` calls ``flush_values``) serialises them; the
    methods are replaced on the instance, once.
    """
    if registry is None:
        import ray.tune.registry as module

        registry = getattr(module, "_global_registry", None)
        if registry is None:
            raise _fail(f"{REGISTRY} does not exist")
    if getattr(registry, "_kdstudy_lock", None) is not None:
        return
    for name in REGISTRY_METHODS:
        if not callable(getattr(registry, name, None)):
            raise _fail(f"{REGISTRY} has no method '{name}'")
    lock = threading.RLock()

    def locked(method: Any) -> Any:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return call

    for name in REGISTRY_METHODS:
        setattr(registry, name, locked(getattr(registry, name)))
    registry._kdstudy_lock = lock
