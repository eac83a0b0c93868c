"""Runs a study: its stages in order, each a Ray Tune experiment in the study dir, resumable at any point.

``study.json`` records the stages, their status and what each produced (trained teachers' files, the best
searched config), so a restart knows where it stopped: finished stages are skipped, the interrupted one is
restored with ``Tuner.restore``, the rest start fresh.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ray_compat
from .console import tensorboard_hint, without_ray_tensorboard_hint
from .layout import SPEC_FILE, all_finished, experiment_trials, load_manifest, orphan_dirs, save_manifest
from .lock import study_lock
from .spec import Spec, SpecError, pair_label, validate
from .state import trial_rows, varying_keys

DONE = ("done", "skipped")
PAIR_DERIVED = ("student", "teacher", "teacher_checkpoint", "teacher_trajectory")
"""Keys that follow from ``pair`` (left out of summaries that already show the pair)."""


class StudyError(RuntimeError):
    """The study cannot go on (a teacher did not train); one line for the user."""


class Interrupted(RuntimeError):
    """A stage stopped before all its trials finished (Ctrl-C): resume later."""


def study_dir_for(spec: Spec) -> Path:
    """``<storage_path>/<name>``."""
    return spec.study_dir


def load_study_spec(study_dir: Path) -> Spec:
    """The resolved spec saved in a study dir, validated again (files it names must still exist)."""
    import yaml

    path = Path(study_dir) / SPEC_FILE
    if not path.is_file():
        raise SpecError(f"{study_dir} is not a study dir (no {SPEC_FILE})")
    return validate(yaml.safe_load(path.read_text()), probe=False)


# -- Ray ------------------------------------------------------------------------------------------------------
# Ray's GCS retries a pending placement group with a backoff growing to 1 s, while a new one is tried at
# once: with concurrent stages, the stage that has waited longest (ce, pending since the teacher started)
# lost every freed slot to a stage launched a moment later and ran last. A 100 ms ceiling lets its retry
# come first after a slot frees (usually: it is a race, not a queue). Only for a Ray this driver starts; a
# cluster keeps its own settings.
LOCAL_RAY_CONFIG = {"gcs_create_placement_group_retry_max_interval_ms": 100}


def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray; returns True when this call started it (and so should shut it down).

    With an address (``--address``, the spec's ``ray.address`` or ``RAY_ADDRESS``) the study's own packages
    travel to the cluster's workers as ``py_modules``, so nodes need the requirements but not this checkout.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
    if address:
        import study
        import trainables

        modules = [str(Path(study.__file__).parent), str(Path(trainables.__file__).parent)]
        ray.init(address=address, runtime_env={"py_modules": modules}, **common)
    else:
        ray.init(num_cpus=num_cpus, _system_config=LOCAL_RAY_CONFIG, **common)
    return True


# -- creating and running -------------------------------------------------------------------------------------
def init_study(spec: Spec, study_dir: Path) -> dict[str, Any]:
    """Create the study dir with ``spec.yaml`` and ``study.json`` (refuses an existing dir)."""
    from .tuner import plan

    if study_dir.exists():
        raise SpecError(f"study dir {study_dir} already exists: continue it with `python -m study resume {study_dir}` "
                        "or pick another --name")
    study_dir.mkdir(parents=True)
    (study_dir / SPEC_FILE).write_text(spec.dump())
    manifest = {
        "name": spec.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "layout": 1,
        "stages": [{**s.as_dict(), "status": "pending"} for s in plan(spec)],
        "teachers": {},
        "methods": _method_catalogue(spec),
    }
    save_manifest(study_dir, manifest)
    return manifest


def _method_catalogue(spec: Spec) -> dict[str, dict[str, Any]]:
    """Label and table order of the study's methods, so ``analysis`` needs no ``trainables`` import."""
    from trainables.methods import catalogue

    return catalogue(dict.fromkeys(["teacher", *spec.methods]))


def _hide_orphans(exp_dir: Path) -> None:
    """Trial folders the experiment state does not know (a killed driver never recorded them) go out of sight."""
    trials = experiment_trials(exp_dir)
    if not trials:
        return
    for child in orphan_dirs(exp_dir, trials):
        child.rename(exp_dir / f".orphan-{child.name}")


def _all_finished(exp_dir: Path) -> bool:
    return all_finished(exp_dir)


def _teacher_files(spec: Spec, study_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for row in trial_rows(study_dir, stages=["teachers"]):
        arch = row["params"].get("teacher")
        folder = Path(row["params"].get("trajectory_dir") or "")
        final = folder / "final.pt"
        if row["state"] == "TERMINATED" and final.is_file():
            out[arch] = {"checkpoint": str(final), "trajectory": str(folder), "trial": row["trial"],
                         "val/top1": row["last val/top1"]}
    return out


def best_trial(study_dir: Path, stage_name: str, metric: str, mode: str) -> dict[str, Any] | None:
    """The stage's best finished trial by its last reported ``metric`` (full-length trials first)."""
    rows = [r for r in trial_rows(study_dir, stages=[stage_name], metric=metric, mode=mode)
            if r["state"] == "TERMINATED" and r[f"last {metric}"] is not None]
    if not rows:
        return None
    full = [r for r in rows if r["epoch"] == r["epochs"]]
    pool = full or rows
    sign = 1 if mode == "max" else -1
    return max(pool, key=lambda r: sign * r[f"last {metric}"])


def _wanted(entry: dict[str, Any], kinds: tuple[str, ...] | None, retry_errored: bool) -> bool:
    """A stage runs unless it is of another kind than asked or done (done with errors: only when retrying)."""
    if kinds is not None and entry["kind"] not in kinds:
        return False
    return entry.get("status") not in DONE or bool(retry_errored and entry.get("errored"))


def _sibling(manifest: dict[str, Any], stage: Any, kind: str) -> dict[str, Any] | None:
    """The ``study.json`` entry of the ``kind`` stage (search or final) of ``stage``'s method and pair."""
    return next((s for s in manifest["stages"] if s["kind"] == kind and s["method"] == stage.method
                 and s.get("pair") == stage.pair), None)


def _searched_best(manifest: dict[str, Any], stage: Any) -> dict[str, Any] | None:
    """The best config of the search stage a final stage re-runs."""
    return _sibling(manifest, stage, "search").get("best")


def _check_teachers(spec: Spec, stage: Any, manifest: dict[str, Any], study_dir: Path) -> None:
    """A stage of a method that distils needs its teachers' files (trained here or given)."""
    from trainables.methods import get_method

    if stage.kind == "teachers" or not get_method(stage.method).needs_teacher:
        return
    labels = [stage.pair] if stage.pair else [pair_label(p) for p in spec.pairs]
    archs = {p["teacher"] for p in spec.pairs if pair_label(p) in labels}
    missing = [a for a in archs if not spec.teacher_files(a, manifest["teachers"]).get("checkpoint")]
    if missing:
        raise StudyError(f"stage {stage.name} needs teacher(s) {', '.join(missing)}, which did not train; "
                         f"see `python -m study status {study_dir}` and resume with --retry-errored")


def _restorable(study_dir: Path, stage: Any) -> bool:
    """The stage's experiment can be restored (its state files repaired from the backup where a kill cut them)."""
    from . import tuner as tn

    if not tn.can_restore(study_dir, stage):
        return False
    outcome = tn.recover_state(study_dir / stage.name)
    if outcome == "recovered":
        print(f"   {stage.name}: state files cut by the crash; restored from {tn.BACKUP}", flush=True)
    elif outcome == "lost":
        print(f"   {stage.name}: state files unreadable and no backup: the stage starts over", flush=True)
    return outcome != "lost"


def _restored_tuner(spec: Spec, stage: Any, study_dir: Path, resources: dict[str, float], retry_errored: bool) -> Any:
    from . import tuner as tn

    exp_dir = study_dir / stage.name
    print(f"== {stage.name}: resuming ({exp_dir})", flush=True)
    if stage.kind == "search":
        stale = tn.reconcile_optuna(spec, stage, study_dir)
        if stale:
            print(f"   {stale} Optuna trial(s) left running by the dead driver marked failed", flush=True)
    _hide_orphans(exp_dir)
    return tn.restore_tuner(stage, study_dir, resources, retry_errored=bool(retry_errored))


def _fresh_tuner(spec: Spec, stage: Any, study_dir: Path, resources: dict[str, float], manifest: dict[str, Any],
                 best: dict[str, Any] | None, verbose: int, callbacks: list | None, reuse: bool = False) -> Any:
    from . import tuner as tn

    exp_dir = study_dir / stage.name
    if exp_dir.exists():  # started but never snapshotted: start over
        exp_dir.rename(study_dir / f".{stage.name}.abandoned-{int(time.time())}")
    if stage.kind == "search":
        tn.forget_optuna_study(spec, stage, study_dir)
    told = f" (seed {spec.data['seeds'][0]}: the search's trial, reused)" if reuse else ""
    print(f"== {stage.name}: {_describe(spec, stage)}{told}", flush=True)
    return tn.build_tuner(spec, stage, study_dir, resources, trained=manifest["teachers"], best=best,
                          verbose=verbose, callbacks=callbacks, reuse=reuse)


def _finish_stage(spec: Spec, stage: Any, entry: dict[str, Any], manifest: dict[str, Any], study_dir: Path) -> None:
    """Record what a fitted stage produced; an unfinished one means Ctrl-C, a teacher that did not train stops."""
    from . import tuner as tn

    exp_dir = study_dir / stage.name
    if not _all_finished(exp_dir):
        entry["status"] = "interrupted"
        save_manifest(study_dir, manifest)
        raise Interrupted(f"stage {stage.name} was interrupted; continue with `python -m study resume {study_dir}`")
    if stage.kind == "search":
        tn.reconcile_optuna(spec, stage, study_dir, finished=True)
    trials = experiment_trials(exp_dir)
    entry.update(trials=len(trials), errored=sum(t["status"] == "ERROR" for t in trials), status="done")
    if stage.kind == "teachers":
        manifest["teachers"].update(_teacher_files(spec, study_dir))
        failed = [a for a in spec.archs_to_train() if a not in manifest["teachers"]]
        if failed:
            entry["status"] = "failed"
            save_manifest(study_dir, manifest)
            raise StudyError(f"teacher training failed for {', '.join(failed)}; see `python -m study status "
                             f"{study_dir}`, then `python -m study resume {study_dir} --retry-errored`")
    if stage.kind == "search":
        metric, mode = spec.data["metric"], spec.data["mode"]
        top = best_trial(study_dir, stage.name, metric, mode)
        earlier = entry.get("best_trial")
        if top is not None:
            entry.update(best=top["params"], best_trial=top["trial"], best_value=top[f"last {metric}"],
                         best_complete=top["epoch"] == top["epochs"])
            if earlier != top["trial"]:
                _supersede_final(stage, top["trial"], earlier, manifest, study_dir)
    save_manifest(study_dir, manifest)


def _supersede_final(search: Any, best: str, earlier: str | None, manifest: dict[str, Any], study_dir: Path) -> None:
    """A re-run search (``--retry-errored``) found a new best: its finished final stage ran the old one, so it
    runs again on the new best (a final skipped for want of a finished search trial runs now); its old trials
    are kept aside (hidden, never deleted) rather than reported."""
    entry = _sibling(manifest, search, "final")
    if entry is None or entry.get("status") not in DONE:
        return
    exp_dir = study_dir / entry["name"]
    kept = ""
    if exp_dir.exists():
        aside = study_dir / f".{entry['name']}.superseded-{int(time.time())}"
        exp_dir.rename(aside)
        kept = f"; its earlier trials are kept in {aside.name}"
    for key in ("reused", "trials", "errored", "note"):
        entry.pop(key, None)
    entry["status"] = "pending"
    was = f" (was {earlier})" if earlier else ""
    print(f"== {search.name}: the best trial is now {best}{was}: {entry['name']} runs again on it{kept}", flush=True)


def _start_stage(spec: Spec, stage: Any, entry: dict[str, Any], manifest: dict[str, Any], study_dir: Path,
                 resources: dict[str, float], opts: dict[str, Any]) -> Any:
    """Mark the stage running and return its tuner (restored or fresh); None when it has nothing to train."""
    best, reuse = None, False
    if stage.kind == "final":
        best = _searched_best(manifest, stage)
        if not best:
            entry.update(status="skipped", note="no finished search trial to take the config from")
            save_manifest(study_dir, manifest)
            return None
        reuse = _reusable(manifest, stage, spec)
    _check_teachers(spec, stage, manifest, study_dir)
    stage_resources = (opts["teacher_resources"] or resources) if stage.kind == "teachers" else resources
    entry["status"] = "running"
    save_manifest(study_dir, manifest)
    if _restorable(study_dir, stage):
        return _restored_tuner(spec, stage, study_dir, stage_resources, opts["retry_errored"])
    entry.pop("reused", None)  # a fresh start decides it anew (a re-run search may have a new best)
    if reuse:
        entry["reused"] = reuse
        if not spec.data["seeds"][1:]:
            print(f"== {stage.name}: the search's trial {reuse['trial']} is the run on seed "
                  f"{spec.data['seeds'][0]}; no other seed to train", flush=True)
            entry.update(trials=0, errored=0, status="done")
            save_manifest(study_dir, manifest)
            return None
    save_manifest(study_dir, manifest)  # a resume after a kill restores the stage with what it reused
    return _fresh_tuner(spec, stage, study_dir, stage_resources, manifest, best, opts["verbose"], opts["callbacks"],
                        reuse=bool(reuse))


def _reusable(manifest: dict[str, Any], stage: Any, spec: Spec) -> dict[str, str] | None:
    """The search trial a final stage reuses for ``seeds[0]``: its best trial, when it ran every epoch."""
    search = _sibling(manifest, stage, "search")
    if not search.get("best_complete") or search.get("best", {}).get("seed") != spec.data["seeds"][0]:
        return None
    return {"stage": search["name"], "trial": search["best_trial"]}


@dataclass
class _Run:
    """The scheduler's view of the stages of one ``run_stages`` call."""

    waiting: list[str]
    running: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (future, stage)
    failure: BaseException | None = None
    kinds: tuple[str, ...] | None = None  # the stage kinds this call runs (None: all)


def run_stages(spec: Spec, study_dir: Path, resources: dict[str, float], *, kinds: tuple[str, ...] | None = None,
               retry_errored: bool = False, verbose: int = 1, callbacks: list | None = None,
               teacher_resources: dict[str, float] | None = None) -> dict[str, Any]:
    """Run every unfinished stage (optionally only some kinds) as a dependency graph; returns the final manifest.

    Each stage is one ``Tuner.fit`` in a worker thread of this driver; a stage starts when what it needs is
    done (``study.graph``), at most ``max_concurrent_stages`` at once (one with ``scheduling: sequential``).
    ``teacher_resources``: per-trial resources of the teacher stage (default: ``resources``).
    """
    import optuna

    from .graph import stage_needs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    manifest = load_manifest(study_dir)
    sequential = spec.data.get("scheduling") == "sequential"
    limit = 1 if sequential else int(spec.data.get("max_concurrent_stages") or len(manifest["stages"]) or 1)
    opts = {"teacher_resources": teacher_resources, "retry_errored": retry_errored, "callbacks": callbacks,
            "verbose": verbose if limit == 1 else 0}  # several stages: the study's summary, not Ray's tables
    needs = stage_needs(spec, manifest["stages"], sequential)
    run = _Run([e["name"] for e in manifest["stages"] if _wanted(e, kinds, retry_errored)], kinds=kinds)
    stop = threading.Event()
    ray_compat.share_stop_event(stop)
    ray_compat.serialise_registry()  # stages start their Tuner.fit in threads, several at a time
    progress = Progress(study_dir, every=_progress_every(verbose, limit))
    with _sigint_sets(stop), without_ray_tensorboard_hint(), \
            ThreadPoolExecutor(max_workers=max(1, len(run.waiting)), thread_name_prefix="stage") as pool:
        while run.waiting or run.running:
            if run.failure is None and not stop.is_set():
                _launch(spec, study_dir, resources, manifest, needs, run, limit, opts, pool)
            if not run.running:
                if run.waiting and run.failure is None and not stop.is_set():
                    run.failure = StudyError(f"stage(s) {', '.join(run.waiting)} cannot start: what they need did "
                                             f"not finish; see `python -m study status {study_dir}`")
                break
            _collect(spec, study_dir, manifest, run, stop)
            _release_teachers(spec, study_dir, manifest, run)
            progress.tick(manifest, run)
    if run.failure is not None:
        raise run.failure
    return manifest


def _launch(spec: Spec, study_dir: Path, resources: dict[str, float], manifest: dict[str, Any], needs: dict,
            run: _Run, limit: int, opts: dict[str, Any], pool: ThreadPoolExecutor) -> None:
    """Start every waiting stage whose needs are met, up to ``limit`` running, in ``study.json``'s order."""
    from .graph import ready
    from .tuner import Stage

    entries = {e["name"]: e for e in manifest["stages"]}
    for name in list(run.waiting):
        if len(run.running) >= limit:
            return
        teacher_open = "teachers" in run.waiting or "teachers" in run.running
        if not ready(needs[name], [*run.waiting, *run.running], manifest["teachers"], teacher_open):
            continue
        run.waiting.remove(name)
        entry = entries[name]
        stage = Stage(entry["name"], entry["kind"], entry["method"], entry.get("pair"))
        try:
            tuner = _start_stage(spec, stage, entry, manifest, study_dir, resources, opts)
        except StudyError as err:
            run.failure = err
            return
        if tuner is not None:
            run.running[name] = (pool.submit(tuner.fit), stage)


def _collect(spec: Spec, study_dir: Path, manifest: dict[str, Any], run: _Run, stop: threading.Event) -> None:
    """Wait up to a second for a stage to end; record each that did (the first failure is kept for the end)."""
    futures = {future: name for name, (future, _) in run.running.items()}
    finished, _ = wait(list(futures), timeout=1.0, return_when=FIRST_COMPLETED)
    entries = {e["name"]: e for e in manifest["stages"]}
    for future in finished:
        name = futures[future]
        _, stage = run.running.pop(name)
        try:
            future.result()
            _finish_stage(spec, stage, entries[name], manifest, study_dir)
            run.waiting.extend(_rerun_finals(stage, manifest, run))
        except (Interrupted, StudyError) as err:
            run.failure = run.failure or err
        except Exception as err:  # noqa: BLE001 - a crashed stage stops the others, then is raised
            run.failure = run.failure or err
            stop.set()


def _rerun_finals(stage: Any, manifest: dict[str, Any], run: _Run) -> list[str]:
    """The final stage a finished search put back to pending (a new best, see ``_supersede_final``)."""
    if stage.kind != "search" or (run.kinds is not None and "final" not in run.kinds):
        return []
    final = _sibling(manifest, stage, "final")
    if final is None or final["status"] != "pending" or final["name"] in run.waiting or final["name"] in run.running:
        return []
    return [final["name"]]


def _release_teachers(spec: Spec, study_dir: Path, manifest: dict[str, Any], run: _Run) -> None:
    """While the teacher stage runs, a teacher whose ``final.pt`` exists lets its students' stages start."""
    from .graph import trained_teachers

    if "teachers" not in run.running:
        return
    fresh = trained_teachers(study_dir, spec.archs_to_train(), manifest["teachers"])
    if fresh:
        manifest["teachers"].update(fresh)
        save_manifest(study_dir, manifest)
        print(f"== teacher(s) {', '.join(fresh)} trained: their students' stages may start", flush=True)


@contextmanager
def _sigint_sets(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C sets ``stop`` (every stage's Tune run ends as on its own Ctrl-C); a second one raises at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    original = signal.getsignal(signal.SIGINT)

    def handler(sig: int, frame: Any) -> None:
        print("\nstopping every running stage (Ctrl-C again to abort at once)", flush=True)
        stop.set()
        signal.signal(signal.SIGINT, original)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, original)


PROGRESS_ENV = "KDSTUDY_PROGRESS_S"


def _progress_every(verbose: int, limit: int) -> float | None:
    """Seconds between progress lines (``KDSTUDY_PROGRESS_S``, default 30); none at verbose 0 or one stage."""
    if verbose < 1 or limit == 1:
        return None
    try:
        return float(os.environ.get(PROGRESS_ENV) or 30.0)
    except ValueError:
        return 30.0


class Progress:
    """The compact periodic line: stages running/done/waiting, trials running/done/errored, slots in use."""

    def __init__(self, study_dir: Path, every: float | None) -> None:
        self.study_dir, self.every = study_dir, every
        self.last = time.monotonic()

    def tick(self, manifest: dict[str, Any], run: _Run) -> None:
        if self.every is None or time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        print(progress_line(manifest, run.running, len(run.waiting)), flush=True)


def progress_line(manifest: dict[str, Any], running: Iterable[str], waiting: int) -> str:
    """``[study] stages 2 running (teachers, search-ce), 1 done, 4 waiting | trials ... | slots 2/2 CPU``."""
    from .tally import TALLY

    running = list(running)
    done = sum(s.get("status") in DONE for s in manifest["stages"])
    counts = TALLY.snapshot()
    trials = {k: sum(c[k] for c in counts.values()) for k in ("running", "done", "errored")}
    return (f"[study] stages {len(running)} running ({', '.join(running)}), {done} done, {waiting} waiting | "
            f"trials {trials['running']} running, {trials['done']} done, {trials['errored']} errored | "
            f"slots {_slots()}")


def _slots() -> str:
    import ray

    try:
        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception:  # noqa: BLE001 - Ray gone (shutting down): the line goes without it
        return "-"
    parts = [f"{total[k] - free.get(k, 0):g}/{total[k]:g} {k}" for k in ("CPU", "GPU") if total.get(k)]
    return ", ".join(parts) or "-"


def _describe(spec: Spec, stage: Any) -> str:
    if stage.kind == "teachers":
        return f"training teacher(s) {', '.join(spec.archs_to_train())} for {spec.data['teacher']['epochs']} epochs"
    if stage.kind == "search":
        return f"Optuna search over {stage.method} on {stage.pair}, {spec.search['trials']} trials"
    if stage.kind == "final":
        return f"best {stage.method} config on {stage.pair} with seeds {spec.data['seeds']}"
    return f"grid of {stage.method} over {len(spec.pairs)} pair(s) x seeds {spec.data['seeds']}"


# -- summary and report ---------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summary(spec: Spec, study_dir: Path) -> str:
    """Best config per method (and per pair), with mean ± std over seeds where there are several."""
    metric = spec.data["metric"]
    manifest = load_manifest(study_dir)
    rows = trial_rows(study_dir, metric=metric, mode=spec.data["mode"])
    lines = [f"study {spec.name}: {study_dir}"]
    for arch, info in manifest.get("teachers", {}).items():
        lines.append(f"  teacher {arch}: {metric} {info.get('val/top1') or float('nan'):.2f} -> {info['checkpoint']}")
    for entry in manifest["stages"]:
        stage_rows = [r for r in rows if _counts_for(r, entry) and r["state"] == "TERMINATED"]
        errored = entry.get("errored") or 0
        tail = f", {errored} errored" if errored else ""
        if entry["kind"] == "search" and entry.get("best"):
            knobs = [k for k in varying_keys(stage_rows) if k in entry["best"]]
            config = ", ".join(f"{k}={_short(entry['best'][k])}" for k in knobs)
            lines.append(f"  {entry['name']}: best {metric} {entry['best_value']:.2f} ({config or 'defaults'}){tail}")
        elif entry["kind"] == "final" and stage_rows:
            val = _mean_std([r[f"last {metric}"] for r in stage_rows])
            test = _mean_std([r["test/top1"] for r in stage_rows])
            lines.append(f"  {entry['name']}: {metric} {val}, test/top1 {test} over {len(stage_rows)} seed(s){tail}")
        elif entry["kind"] == "grid" and stage_rows:
            keys = varying_keys(stage_rows, skip=("seed", "method", *PAIR_DERIVED))
            groups: dict[tuple, list[dict[str, Any]]] = {}
            for r in stage_rows:
                groups.setdefault(tuple(_short(r["params"].get(k)) for k in keys), []).append(r)
            for key, members in groups.items():
                label = ", ".join(f"{k}={v}" for k, v in zip(keys, key)) or "fixed config"
                val = _mean_std([r[f"last {metric}"] for r in members])
                test = _mean_std([r["test/top1"] for r in members])
                lines.append(f"  {entry['name']} [{label}]: {metric} {val}, test/top1 {test}")
        elif entry.get("status") != "done":
            lines.append(f"  {entry['name']}: {entry.get('status')} {entry.get('note', '')}".rstrip())
    return "\n".join(lines)


def _counts_for(row: dict[str, Any], entry: dict[str, Any]) -> bool:
    """A trial row belongs to a stage's summary: its own trials, and for a final stage the reused search trial."""
    reused = entry.get("reused") or {}
    own = row["stage"] == entry["name"]
    return own or (row["stage"] == reused.get("stage") and row["trial"] == reused.get("trial"))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_report(study_dir: Path) -> str:
    """The analysis package's report of the study dir, as one line (a failing report never fails a study)."""
    from analysis.report import build_report as analysis_report

    try:
        out = analysis_report(study_dir)
    except Exception as err:  # noqa: BLE001 - a failing report must not fail a finished study
        return f"report: failed ({type(err).__name__}: {err})"
    return f"report: {out}"


# -- outcome --------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What the stages that ran left: errored trials and stages without a finished trial fail the study."""

    trials: int = 0
    errored: int = 0
    first_error: str = ""
    empty: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errored or self.empty)

    def message(self, study_dir: Path) -> str:
        parts = []
        if self.errored:
            parts.append(f"{self.errored} of {self.trials} trial(s) errored (first: {self.first_error})")
        if self.empty:
            parts.append(f"no finished trial in stage(s) {', '.join(self.empty)}")
        return "; ".join(parts) + f"; see `python -m study status {study_dir}`"


def study_outcome(study_dir: Path) -> Outcome:
    """Count errored trials and empty stages among the stages that ended (done or skipped)."""
    manifest = load_manifest(study_dir)
    ended = [s["name"] for s in manifest["stages"] if s.get("status") in DONE]
    rows = trial_rows(study_dir, stages=ended)
    outcome = Outcome(trials=len(rows))
    errors = [r for r in rows if r["state"] == "ERROR"]
    outcome.errored = len(errors)
    if errors:
        outcome.first_error = f"{errors[0]['stage']}/{errors[0]['trial']}: {errors[0]['error'] or 'no message'}"
    finished = {r["stage"] for r in rows if r["state"] == "TERMINATED"}
    reusing = {s["name"] for s in manifest["stages"] if s.get("reused")}  # its seeds[0] trial is the search's
    outcome.empty = [name for name in ended if name not in finished and name not in reusing]
    return outcome


# -- the whole study ------------------------------------------------------------------------------------------
def run_study(spec: Spec, study_dir: Path | None = None, *, address: str | None = None, resume: bool = False,
              kinds: tuple[str, ...] | None = None, retry_errored: bool = False, verbose: int = 1,
              report: bool | None = None, callbacks: list | None = None) -> Path:
    """Create (or resume) and run a study; prints progress and the summary. Returns the study dir.

    Holds the study dir's lock throughout (``StudyBusy`` when another driver has it). ``callbacks``: extra
    Tune callbacks for the stages this call creates. ``study_outcome`` tells whether every trial finished.
    """
    from .resources import cluster_nodes, teacher_resources, trial_resources

    study_dir = Path(study_dir or study_dir_for(spec)).absolute()
    if not resume and study_dir.exists():
        init_study(spec, study_dir)  # raises the "already exists" SpecError
    with ExitStack() as held:
        if resume:
            held.enter_context(study_lock(study_dir))
        if connect_ray(address or spec.data["ray"]["address"], spec.data["ray"]["num_cpus"]):
            held.callback(_shutdown_ray)
        nodes = cluster_nodes()
        resources = trial_resources(spec, nodes)
        if not resume:
            init_study(spec, study_dir)
            held.enter_context(study_lock(study_dir))
        print(f"study {spec.name}: {study_dir}", flush=True)
        hint = tensorboard_hint(study_dir)
        if hint:
            print(hint, flush=True)
        run_stages(spec, study_dir, resources, kinds=kinds, retry_errored=retry_errored, verbose=verbose,
                   callbacks=callbacks,
                   teacher_resources=teacher_resources(resources, nodes, len(spec.archs_to_train())))
    print("", flush=True)
    print(summary(spec, study_dir), flush=True)
    manifest = load_manifest(study_dir)
    complete = all(s.get("status") in DONE for s in manifest["stages"])
    if complete and (spec.data["report"] if report is None else report):
        print(build_report(study_dir), flush=True)
    sys.stdout.flush()
    return study_dir


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()
