"""Builds (or restores) the Ray Tune experiment of one study stage.

One experiment per stage keeps each experiment's trials homogeneous (one method, one trainable, one
Optuna study), so ``Tuner.restore`` has nothing to reconcile across methods, ``status`` and the analysis
read each folder the same way, and the number of trials per method is exact. Stages:

- ``teachers``: the ``teacher`` method, a grid over the teacher architectures to train.
- ``search-<method>[-<pair>]``: ``OptunaSearch`` over the method's define-by-run space (``study.spaces``),
  the paper defaults evaluated first, optional ASHA on the validation metric.
- ``final-<method>[-<pair>]``: the best searched config re-run for every seed (``tune.grid_search``).
- ``grid-<method>``: ``tune.grid_search`` over pairs x seeds x the spec's grid for that method.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from . import ray_compat
from .layout import OPTUNA_FILE, TERMINAL, experiment_trials
from .resources import PendingTrialWarning
from .spec import Spec, grid_columns, grid_rows, json_key, pair_label, teacher_folder
from .tally import TALLY

RESOURCE_KEYS = ("cpu", "gpu")


@dataclass
class Stage:
    """One Tune experiment of the study (stored in ``study.json``)."""

    name: str
    kind: str  # teachers | search | final | grid
    method: str
    pair: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "method": self.method, "pair": self.pair}


def plan(spec: Spec) -> list[Stage]:
    """The stages of a study, in the order they run."""
    stages: list[Stage] = []
    if spec.data["teacher"]["train"] and spec.archs_to_train():
        stages.append(Stage("teachers", "teachers", "teacher"))
    many = len(spec.pairs) > 1
    for m in spec.methods:
        if spec.search is None:
            stages.append(Stage(f"grid-{m}", "grid", m))
            continue
        for pair in spec.pairs:
            label = pair_label(pair)
            suffix = f"-{label}" if many else ""
            stages.append(Stage(f"search-{m}{suffix}", "search", m, label))
            if spec.search["final"]:
                stages.append(Stage(f"final-{m}{suffix}", "final", m, label))
    return stages


# -- picklable helpers (stored in the experiment's tuner.pkl) ------------------------------------------------------
class Lookup:
    """``tune.sample_from`` value: ``table[config[key]]`` (e.g. a pair's student from its label)."""

    def __init__(self, key: str, table: Mapping[Any, Any], by_json: bool = False) -> None:
        self.key = key
        self.table = dict(table)
        self.by_json = by_json

    def __call__(self, spec: Any) -> Any:
        config = spec.get("config", spec) if isinstance(spec, Mapping) else spec
        if isinstance(config, Mapping) and self.key not in config and "config" in config:
            config = config["config"]
        value = config[self.key]
        return self.table[json_key(value) if self.by_json else value]

    def __repr__(self) -> str:
        return f"Lookup({self.key})"


def trial_dirname(trial: Any) -> str:
    """Short trial folder names: ``<method>_<trial id>`` (the config is in ``params.json``)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


class StudyOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that accepts results for trials the database already finished.

    After a kill -9 the database can be ahead of the restored searcher: a trial that finished after the last
    experiment snapshot was already told to Optuna, while the restored experiment still runs it (it
    re-reports its final epoch and ends). Optuna refuses updates to a finished trial; the database already
    holds the right value, so those reports are dropped instead of crashing the driver.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


class StudyProgress(Callback):
    """One line per finished or failed trial, with the parameters that matter in its stage."""

    def __init__(self, stage_name: str, keys: list[str]) -> None:
        self.stage_name = stage_name
        self.keys = keys

    def setup(self, **info: Any) -> None:
        TALLY.stopped(self.stage_name)  # a restored stage starts with nothing running

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        TALLY.stopped(self.stage_name)  # interrupted trials never report complete or error

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        TALLY.add(self.stage_name, "running")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        TALLY.add(self.stage_name, "running", -1)  # a retried trial starts (and is counted) again

    def _params(self, trial: Any) -> str:
        parts = []
        for key in self.keys:
            if key in trial.config:
                value = trial.config[key]
                parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        return ", ".join(parts)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        TALLY.add(self.stage_name, "running", -1)
        TALLY.add(self.stage_name, "done")
        result = trial.last_result or {}
        val, test = result.get("val/top1"), result.get("test/top1")
        text = f"val/top1 {val:.2f}" if isinstance(val, (int, float)) else "no result"
        if isinstance(test, (int, float)):
            text += f", test/top1 {test:.2f}"
        print(f"[{self.stage_name}] {trial} finished at epoch {result.get('epoch')}: {text} ({self._params(trial)})",
              flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from .layout import read_error

        TALLY.add(self.stage_name, "running", -1)
        TALLY.add(self.stage_name, "errored")
        message = ""
        for folder in (trial.local_path, trial.path):
            if folder and not message:
                message = read_error(folder) or ""
        print(f"[{self.stage_name}] {trial} ERROR ({self._params(trial)}): {message}", flush=True)


class StateBackup(Callback):
    """Keeps ``.state-backup/``: the last complete set of the experiment's state files.

    Tune writes its state files into a local staging folder and copies them to the experiment folder in the
    background; a driver killed during that copy leaves a truncated ``searcher-state-*.pkl`` or
    ``experiment_state-*.json`` that ``Tuner.restore`` cannot read. ``on_step_end`` runs in the controller's
    thread right after its snapshot, so the staged files are complete and consistent then: they are copied
    to a new folder that replaces the backup by rename (a kill leaves the old backup or the new one whole).
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if not trials:
            return
        paths = ray_compat.experiment_paths(trials[0])
        if paths is None:
            return  # remote storage: Tune's own copies are all there is
        staging, target = paths
        states = sorted(staging.glob("experiment_state-*.json"))
        if not states:
            return
        stamp = states[-1].stat().st_mtime
        if stamp == self._last:
            return
        self._last = stamp
        write_backup(staging, target)


# -- pieces ----------------------------------------------------------------------------------------------------------
def optuna_storage(study_dir: Path) -> Any:
    from optuna.storages import RDBStorage

    # Several search stages share the file at once: wait for the other's write instead of failing at 5 s.
    return RDBStorage(f"sqlite:///{(Path(study_dir) / OPTUNA_FILE).absolute()}",
                      engine_kwargs={"connect_args": {"timeout": 120}})


def optuna_study_name(spec: Spec, stage: Stage) -> str:
    return f"{spec.name}/{stage.name}"


def trainable(method: str, resources: Mapping[str, float]) -> Any:
    from ray import tune

    from .trainable import trainable_for

    ray_compat.check()  # before any stage starts or restores: the Ray internals resume relies on exist

    return tune.with_resources(trainable_for(method), {k: v for k, v in resources.items() if v})


def _runtime_constants(spec: Spec, resources: Mapping[str, float]) -> dict[str, Any]:
    gpu = float(resources.get("gpu", 0) or 0)
    out: dict[str, Any] = {}
    if 0 < gpu < 1 and "gpu_memory_fraction" not in spec.data["config"]:
        out["gpu_memory_fraction"] = gpu  # several trials share a card: cap each process's share
    return out


def _pairs_space(spec: Spec, method: str, trained: Mapping[str, Any]) -> dict[str, Any]:
    """Fixed keys of ``method`` over all pairs: constants where equal, a ``Lookup`` on ``pair`` elsewhere.

    A key that only some pairs set (a pair's own ``method_config``) gets the method's default on the others:
    a Tune space cannot leave a key out for some trials, and ``None`` would not mean the default.
    """
    from ray import tune

    from trainables.config import LOOP_DEFAULTS
    from trainables.data import DATA_KEYS
    from trainables.methods import get_method

    configs = {pair_label(p): spec.pair_config(method, p, trained) for p in spec.pairs}
    labels = list(configs)
    if len(labels) == 1:
        return dict(configs[labels[0]])
    defaults = {**LOOP_DEFAULTS, **DATA_KEYS, **get_method(method).defaults}
    keys = list(dict.fromkeys(k for cfg in configs.values() for k in cfg))
    space: dict[str, Any] = {"pair": tune.grid_search(labels)}
    for key in keys:
        if key == "pair":
            continue
        values = [configs[label].get(key, defaults.get(key)) for label in labels]
        if all(json.dumps(v, default=str) == json.dumps(values[0], default=str) for v in values):
            space[key] = values[0]
        else:
            space[key] = tune.sample_from(Lookup("pair", dict(zip(labels, values))))
    return space


def _seeds(spec: Spec) -> Any:
    from ray import tune

    seeds = spec.data["seeds"]
    return tune.grid_search(list(seeds)) if len(seeds) > 1 else seeds[0]


def _run_config(spec: Spec, stage: Stage, study_dir: Path, verbose: int, show: list[str],
                callbacks: list | None = None) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=stage.name,
        storage_path=str(study_dir),
        failure_config=tune.FailureConfig(max_failures=int(spec.data["max_failures"])),
        # num_to_keep also makes Tune snapshot the experiment every num_to_keep checkpoints of a trial.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=int(spec.data["checkpoint_keep"])),
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=verbose,
        callbacks=[StudyProgress(stage.name, show), StateBackup(), PendingTrialWarning(stage.name), *(callbacks or [])],
    )


# -- building ----------------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """What one stage's Tune experiment searches: its space, how, and the keys its progress lines show."""

    space: dict[str, Any]
    show: list[str]
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1


def _teachers_experiment(spec: Spec, stage: Stage, study_dir: Path, **_: Any) -> Experiment:
    """A grid over the architectures to train, each writing its trajectory to its own folder."""
    from ray import tune

    archs = spec.archs_to_train()
    configs = {a: spec.teacher_config(a, str(teacher_folder(study_dir, a))) for a in archs}
    if len(archs) == 1:
        return Experiment(dict(configs[archs[0]]), ["teacher"])
    space = {k: v for k, v in configs[archs[0]].items() if k not in ("teacher", "trajectory_dir")}
    space["teacher"] = tune.grid_search(archs)
    folders = {a: c["trajectory_dir"] for a, c in configs.items()}
    space["trajectory_dir"] = tune.sample_from(Lookup("teacher", folders))
    return Experiment(space, ["teacher"])


def _grid_experiment(spec: Spec, stage: Stage, study_dir: Path, *, trained: Mapping[str, Any], **_: Any) -> Experiment:
    """Pairs x seeds x the spec's grid of the method; a grid key naming several columns varies them together."""
    from ray import tune

    space = _pairs_space(spec, stage.method, trained)
    space["seed"] = _seeds(spec)
    show: list[str] = []
    for key, values in spec.data["grid"].get(stage.method, {}).items():
        columns = grid_columns(key)
        rows = grid_rows(key, values)
        space[columns[0]] = tune.grid_search([row[columns[0]] for row in rows])
        for column in columns[1:]:  # varies with the first column: looked up from its value
            space[column] = tune.sample_from(Lookup(columns[0], {json_key(r[columns[0]]): r[column] for r in rows},
                                                    by_json=True))
        show.extend(columns)
    show += ["pair", "seed"] if len(spec.pairs) > 1 else ["seed"]
    return Experiment(space, show)


def final_seeds(spec: Spec, reuse: bool) -> list[int]:
    """The seeds a final stage trains: all but ``seeds[0]`` when the search's best trial already ran it."""
    seeds = list(spec.data["seeds"])
    return seeds[1:] if reuse else seeds


def _final_experiment(spec: Spec, stage: Stage, study_dir: Path, *, best: Mapping[str, Any] | None,
                      reuse: bool = False, **_: Any) -> Experiment:
    """The search's best config on every seed (but ``seeds[0]`` when its search trial is reused)."""
    from ray import tune

    if not best:
        raise ValueError(f"stage {stage.name} needs the best config of its search")
    seeds = final_seeds(spec, reuse)
    space = {k: v for k, v in best.items() if k != "seed"}
    space["seed"] = tune.grid_search(seeds) if len(seeds) > 1 else seeds[0]
    return Experiment(space, ["seed"])


def _asha(spec: Spec, epochs: int) -> Any:
    """The spec's ASHA scheduler over epochs, or None."""
    if not spec.data["scheduler"]:
        return None
    from ray.tune.schedulers import ASHAScheduler

    sched = spec.data["scheduler"]
    return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=int(sched["grace_period"]),
                         reduction_factor=float(sched["reduction_factor"]))


def _search_experiment(spec: Spec, stage: Stage, study_dir: Path, *, trained: Mapping[str, Any],
                       **_: Any) -> Experiment:
    """Optuna over the method's space on ``seeds[0]``, the paper defaults first, its database in the study dir."""
    from optuna.samplers import TPESampler

    pair = next(p for p in spec.pairs if pair_label(p) == stage.pair)
    space = spec.pair_config(stage.method, pair, trained)
    space["seed"] = spec.data["seeds"][0]
    method_space = spec.method_space(stage.method, pair)
    search = spec.search or {}
    trials = int(search["trials"])
    points = [method_space.default_point()] if search["defaults_first"] else []
    search_alg = StudyOptunaSearch(
        method_space,
        metric=spec.data["metric"],
        mode=spec.data["mode"],
        points_to_evaluate=[p for p in points if p] or None,
        sampler=TPESampler(seed=int(search["seed"]), n_startup_trials=max(1, min(10, trials // 2))),
        study_name=optuna_study_name(spec, stage),
        storage=optuna_storage(study_dir),
    )
    return Experiment(space, list(method_space.active_knobs()), search_alg=search_alg,
                      scheduler=_asha(spec, int(method_space.base["epochs"])), num_samples=trials)


EXPERIMENTS = {"teachers": _teachers_experiment, "grid": _grid_experiment, "final": _final_experiment,
               "search": _search_experiment}


def build_tuner(spec: Spec, stage: Stage, study_dir: Path, resources: Mapping[str, float], *,
                trained: Mapping[str, Any] | None = None, best: Mapping[str, Any] | None = None,
                verbose: int = 1, callbacks: list | None = None, reuse: bool = False) -> Any:
    """A fresh ``tune.Tuner`` for ``stage`` (see the module docstring for what each kind runs).

    ``callbacks``: extra Tune callbacks (picklable: they are stored with the experiment). ``reuse``: a final
    stage leaves out ``seeds[0]`` (its search's best trial is that run).
    """
    from ray import tune

    if stage.kind not in EXPERIMENTS:  # pragma: no cover - plan() only makes the kinds above
        raise ValueError(f"unknown stage kind {stage.kind}")
    experiment = EXPERIMENTS[stage.kind](spec, stage, study_dir, trained=trained or {}, best=best,
                                             reuse=reuse)
    space = experiment.space
    space.update({k: v for k, v in _runtime_constants(spec, resources).items() if k not in space})
    tune_config = tune.TuneConfig(
        metric=spec.data["metric"],
        mode=spec.data["mode"],
        search_alg=experiment.search_alg,
        scheduler=experiment.scheduler,
        num_samples=experiment.num_samples,
        max_concurrent_trials=spec.data["max_concurrent_trials"],
        reuse_actors=True,
        trial_dirname_creator=trial_dirname,
    )
    return tune.Tuner(
        trainable(stage.method, resources),
        param_space=space,
        tune_config=tune_config,
        run_config=_run_config(spec, stage, study_dir, verbose, experiment.show, callbacks),
    )


def restore_tuner(stage: Stage, study_dir: Path, resources: Mapping[str, float], retry_errored: bool = False) -> Any:
    """``Tuner.restore`` of a stage's experiment: unfinished trials continue, errored ones only on request."""
    from ray import tune

    return tune.Tuner.restore(
        str(Path(study_dir) / stage.name),
        trainable(stage.method, resources),
        resume_unfinished=True,
        resume_errored=retry_errored,
    )


def can_restore(study_dir: Path, stage: Stage) -> bool:
    from ray import tune

    path = Path(study_dir) / stage.name
    return path.is_dir() and tune.Tuner.can_restore(str(path))


# -- experiment state files that survive a kill -9 ------------------------------------------------------------
BACKUP = ".state-backup"
STATE_GLOBS = ("*.json", "*.pkl")


def write_backup(staging: Path, exp_dir: Path) -> None:
    """Copy the staged state files (and ``tuner.pkl``) to ``exp_dir/.state-backup`` atomically."""
    fresh = exp_dir / f"{BACKUP}.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    for pattern in STATE_GLOBS:
        for path in staging.glob(pattern):
            shutil.copy2(path, fresh / path.name)
    if (exp_dir / "tuner.pkl").is_file():
        shutil.copy2(exp_dir / "tuner.pkl", fresh / "tuner.pkl")
    current, old = exp_dir / BACKUP, exp_dir / f"{BACKUP}.old"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    fresh.rename(current)
    shutil.rmtree(old, ignore_errors=True)


def _readable(path: Path) -> bool:
    """Parses as JSON or unpickles (Tune stores some pickles under a .json name)."""
    try:
        json.loads(path.read_bytes().decode())
        return True
    except Exception:  # noqa: BLE001 - not JSON: maybe a pickle
        pass
    try:
        with open(path, "rb") as fh:
            pickle.load(fh)
        return True
    except Exception:  # noqa: BLE001 - truncated or otherwise unreadable
        return False


def _state_files(folder: Path) -> list[Path]:
    return [p for pattern in STATE_GLOBS for p in folder.glob(pattern) if p.is_file()]


def state_readable(folder: Path) -> bool:
    files = _state_files(folder)
    return any(p.name.startswith("experiment_state-") for p in files) and all(_readable(p) for p in files)


def recover_state(exp_dir: Path) -> str:
    """Make an experiment folder restorable after a kill: ``ok``, ``recovered`` (from the backup) or ``lost``."""
    if state_readable(exp_dir):
        return "ok"
    backup = exp_dir / BACKUP
    if not (backup.is_dir() and state_readable(backup)):
        old = exp_dir / f"{BACKUP}.old"  # a kill between the two renames of write_backup
        if old.is_dir() and state_readable(old):
            backup = old
        else:
            return "lost"
    broken = exp_dir / f".state-broken-{int(time.time())}"
    broken.mkdir()
    for path in _state_files(exp_dir):
        if path.name != "tuner.pkl" or not _readable(path):
            path.rename(broken / path.name)
    for path in _state_files(backup):
        if not (exp_dir / path.name).exists():
            shutil.copy2(path, exp_dir / path.name)
    return "recovered" if state_readable(exp_dir) else "lost"


# -- Optuna bookkeeping across driver crashes ------------------------------------------------------------
def _matches(params: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    return all(k in config and config[k] == v for k, v in params.items())


def reconcile_optuna(spec: Spec, stage: Stage, study_dir: Path, finished: bool = False) -> int:
    """Fail Optuna trials left RUNNING by a dead driver; re-enqueue stale default points. Returns how many.

    An Optuna trial created after the last experiment snapshot has no Tune trial to finish it: after a
    restore it would stay RUNNING forever. It is kept only when an unfinished Tune trial of the restored
    experiment has exactly its parameters (that trial will report to it). With ``finished`` every RUNNING
    trial is stale (the experiment is over).
    """
    import optuna
    from optuna.trial import TrialState

    storage = optuna_storage(study_dir)
    try:
        study = optuna.load_study(study_name=optuna_study_name(spec, stage), storage=storage)
    except KeyError:
        return 0
    trials = [] if finished else experiment_trials(Path(study_dir) / stage.name)
    pending = [t["config"] for t in trials if t["status"] not in TERMINAL]
    stale = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if any(_matches(trial.params, cfg) for cfg in pending):
            continue
        storage.set_trial_user_attr(trial._trial_id, "stale", "left running by a driver that died; failed on resume")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        fixed = trial.system_attrs.get("fixed_params")
        if fixed:
            study.enqueue_trial(dict(fixed))  # a paper-defaults point must still be evaluated
        stale += 1
    return stale


def forget_optuna_study(spec: Spec, stage: Stage, study_dir: Path) -> None:
    """Drop a stage's Optuna study before its experiment starts over (no Tune state to restore)."""
    import optuna

    try:
        optuna.delete_study(study_name=optuna_study_name(spec, stage), storage=optuna_storage(study_dir))
    except KeyError:
        pass
