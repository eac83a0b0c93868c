"""A study spec: YAML -> one validated, resolved dict, checked completely before anything runs.

Every problem is a ``SpecError`` with one line naming the key, the value and what is allowed. Validation
imports ``trainables`` (registries of methods, models, data sets) but never Ray, writes nothing, and builds
every trial's fixed config through ``trainables.config.resolve_config`` so a key a method does not have is
caught here, not in trial 17 an hour later. Pairs are probed by building each method on freshly
initialised models and running one forward pass on two random images (catches a pair a method cannot
connect).

The format itself (keys, types, defaults, checks across sections) is ``study.spec_schema``'s pydantic
models (README "Spec keys" documents each key); this module adds what needs the whole validated spec.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError

from . import layout
from .preflight import check_files as open_files
from .spaces import MethodSpace, available_knobs, parse_dist
from .spec_schema import STUDY_MANAGED as STUDY_MANAGED  # the spec's vocabulary, re-exported
from .spec_schema import SpecError, StudySpec, grid_columns, parse_spec
from .spec_schema import json_key as json_key
from .spec_schema import suggest as suggest

RUNTIME_KEYS = ("device", "amp", "channels_last", "compile", "eval_batch_size", "gpu_memory_fraction", "batch_size")
"""Global ``config`` keys that also apply to the teacher stage (besides data keys)."""

TRAJECTORY_KEY = "teacher_trajectory"
"""Config key through which a method (online distillation) receives the teacher's checkpoint trajectory."""


# -- loading and overrides ----------------------------------------------------------------------------------
def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a spec file; a missing file or broken YAML is a SpecError."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise SpecError(f"{p} is not valid YAML{line}: {getattr(err, 'problem', err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{p} must hold a mapping of spec keys, got {type(data).__name__}")
    return data


def apply_sets(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; list items by index: ``pairs.0.student``)."""
    out = copy.deepcopy(raw)
    for item in sets:
        if "=" not in item:
            raise SpecError(f"--set needs key=value, got '{item}'")
        path, text = item.split("=", 1)
        parts = [p for p in path.strip().split(".")]
        if not path.strip() or any(not p for p in parts):
            raise SpecError(f"--set key '{path}' is not a dotted key path")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], create=True)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, parts)] = value
        else:
            node[last] = value
    return out


def _index(node: list, part: str, parts: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise SpecError(f"--set {'.'.join(parts)}: '{part}' is not an index into a list of {len(node)}")
    return int(part)


def _child(node: Any, part: str, parts: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, parts)]
    if not isinstance(node, dict):
        raise SpecError(f"--set {'.'.join(parts)}: '{'.'.join(parts[:-1])}' is not a mapping")
    if node.get(part) is None and create:
        node[part] = {}
    return node[part]


def teacher_folder(study_dir: str | Path, arch: str) -> Path:
    """Where the teacher stage writes ``arch``'s trajectory and ``final.pt``."""
    return Path(study_dir) / "teachers" / "trajectories" / arch


def grid_rows(key: str, values: list[Any]) -> list[dict[str, Any]]:
    """The variants one grid entry stands for: ``[{key: value}]``, or for ``a+b`` one dict per row."""
    columns = grid_columns(key)
    if len(columns) == 1:
        return [{key: v} for v in values]
    return [dict(zip(columns, row)) for row in values]


def pair_label(pair: Mapping[str, str]) -> str:
    """The ``pair`` value trials carry: ``<teacher>-<student>`` (``study.layout.pair_label``)."""
    return layout.pair_label(pair["teacher"], pair["student"])


# -- the spec -----------------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """A validated study spec. ``data`` is the resolved dict written to ``spec.yaml``."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def methods(self) -> list[str]:
        return list(self.data["methods"])

    @property
    def pairs(self) -> list[dict[str, str]]:
        return [dict(p) for p in self.data["pairs"]]

    @property
    def search(self) -> dict[str, Any] | None:
        return self.data["search"]

    @property
    def study_dir(self) -> Path:
        """``<storage_path>/<name>`` (with a URI storage path the study's own files stay under ./studies)."""
        storage = self.data["storage_path"]
        default = StudySpec.model_fields["storage_path"].default
        base = Path(storage) if "://" not in storage else Path(default).absolute()
        return base / self.name

    def future_teachers(self, study_dir: str | Path | None = None) -> dict[str, dict[str, str]]:
        """Files the teacher stage will write: ``{arch: {checkpoint, trajectory}}``."""
        out = {}
        for arch in self.archs_to_train():
            folder = teacher_folder(study_dir or self.study_dir, arch)
            out[arch] = {"checkpoint": str(folder / "final.pt"), "trajectory": str(folder)}
        return out

    def teacher_archs(self) -> list[str]:
        """Teacher architectures some listed method needs (in pair order, unique)."""
        from trainables.methods import get_method

        if not any(get_method(m).needs_teacher for m in self.methods):
            return []
        return list(dict.fromkeys(p["teacher"] for p in self.pairs))

    def archs_to_train(self) -> list[str]:
        given = self.data["teacher"]["checkpoints"]
        return [a for a in self.teacher_archs() if a not in given]

    def method_settings(self, method: str, pair: Mapping[str, str]) -> dict[str, Any]:
        """The keys the spec fixes for ``method`` on ``pair``: ``method_config`` with the pair's own over it.

        The one place the two levels merge: trial configs (``pair_config``), the keys a search leaves alone
        (``method_space``) and validation all read it. ``pair`` is matched on its teacher and student.
        """
        own = next((p.get("method_config", {}) for p in self.data["pairs"]
                    if (p["teacher"], p["student"]) == (pair["teacher"], pair["student"])), {})
        return {**self.data["method_config"].get(method, {}), **own.get(method, {})}

    def base_config(self, method: str, pair: Mapping[str, str]) -> dict[str, Any]:
        """The fixed config of one method on one pair (without the pair's archs, seed and teacher files)."""
        from trainables.config import allowed_keys
        from trainables.methods import get_method

        keys = allowed_keys(get_method(method).defaults)
        cfg: dict[str, Any] = {"method": method, "dataset": self.data["data"]["dataset"]}
        if self.data["data"]["root"]:
            cfg["data_root"] = self.data["data"]["root"]
        cfg.update({k: v for k, v in self.data["config"].items() if k in keys})
        cfg.update(self.method_settings(method, pair))
        return cfg

    def teacher_files(self, arch: str, trained: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
        """``{'checkpoint', 'trajectory'}`` for a teacher arch: given in the spec, or from the teacher stage."""
        given = self.data["teacher"]
        if arch in given["checkpoints"]:
            out = {"checkpoint": given["checkpoints"][arch]}
            if arch in given["trajectories"]:
                out["trajectory"] = given["trajectories"][arch]
            return out
        if trained and arch in trained:
            return dict(trained[arch])
        return {}

    def pair_config(self, method: str, pair: Mapping[str, str], trained: Mapping | None = None) -> dict[str, Any]:
        """Fixed config of ``method`` on ``pair`` (teacher files filled when known), plus the ``pair`` label."""
        from trainables.config import allowed_keys
        from trainables.methods import get_method

        cls = get_method(method)
        cfg = self.base_config(method, pair)
        cfg.update({"pair": pair_label(pair), "student": pair["student"], "teacher": pair["teacher"]})
        if cls.needs_teacher:
            files = self.teacher_files(pair["teacher"], trained)
            if files.get("checkpoint"):
                cfg["teacher_checkpoint"] = files["checkpoint"]
            if TRAJECTORY_KEY in allowed_keys(cls.defaults) and files.get("trajectory"):
                cfg.setdefault(TRAJECTORY_KEY, files["trajectory"])
            if cfg.get("teacher_stream", "auto") is not False:  # the trials share the teacher's outputs
                cfg.setdefault("teacher_stream_dir", str(self.study_dir / layout.STREAM_DIR))
        return cfg

    def teacher_config(self, arch: str, trajectory_dir: str) -> dict[str, Any]:
        t = self.data["teacher"]
        cfg: dict[str, Any] = {"method": "teacher", "teacher": arch, "dataset": self.data["data"]["dataset"]}
        if self.data["data"]["root"]:
            cfg["data_root"] = self.data["data"]["root"]
        from trainables.data import DATA_KEYS

        shared = set(DATA_KEYS) | set(RUNTIME_KEYS)
        cfg.update({k: v for k, v in self.data["config"].items() if k in shared})
        cfg.update({"epochs": t["epochs"], "seed": t["seed"], "trajectory_dir": trajectory_dir})
        cfg.update(t["config"])
        return cfg

    def method_space(self, method: str, pair: Mapping[str, str]) -> MethodSpace:
        """The Optuna space of ``method`` on ``pair`` (knobs fixed by ``config``, ``method_config`` or the pair's
        own ``method_config`` are not searched)."""
        from trainables.config import allowed_keys, resolve_config
        from trainables.methods import get_method

        cls = get_method(method)
        cfg = self.pair_config(method, pair, self.future_teachers())
        if cls.needs_teacher:
            cfg.setdefault("teacher_checkpoint", "<teacher>")
        cfg = {k: v for k, v in cfg.items() if k != "pair"}
        try:
            base = resolve_config(cfg)
        except ConfigError:  # a check on teacher files not written yet: fill defaults without it
            from trainables.config import LOOP_DEFAULTS, default_lr
            from trainables.data import DATA_KEYS

            base = {**LOOP_DEFAULTS, **DATA_KEYS, **cls.defaults, **cfg}
            base["lr"] = base["lr"] if base["lr"] is not None else default_lr(base[cls.model_key])
        fixed = set(self.method_settings(method, pair)) | set(self.data["config"])
        space_cfg = (self.search or {}).get("space", {}).get(method, {})
        overrides = {}
        knobs = available_knobs(method, allowed_keys(cls.defaults))
        for name, value in space_cfg.items():
            dist = parse_dist(value, knobs[name].dist if name in knobs else None)
            if dist is not None:
                overrides[name] = dist
        return MethodSpace(method, base, frozenset(allowed_keys(cls.defaults)), frozenset(fixed), overrides)

    def dump(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


def load_spec(path: str | os.PathLike, sets: list[str] | None = None, probe: bool = True) -> Spec:
    """Read, override and validate a spec file (name defaults to the file's stem)."""
    raw = apply_sets(load_yaml(path), sets or [])
    if raw.get("name") is None:
        raw["name"] = Path(path).stem
    return validate(raw, probe=probe)


def validate(raw: Mapping[str, Any], probe: bool = True) -> Spec:
    """Check every key and value; fill defaults; resolve paths. Raises SpecError (one line).

    The steps: the spec's own format (``spec_schema``: types, ranges, registries, checks across sections),
    that the files it names exist, every trial's and teacher's config through the trials' own resolver,
    the files opened and checked (``study.preflight``), then (``probe``) one step of every method on every
    pair.
    """
    spec = Spec(parse_spec(raw).model_dump())
    check_files(spec)
    check_trial_configs(spec)
    check_teacher_configs(spec)
    open_files(spec)  # data, teacher and trajectory files opened and checked, configs known to be sound
    if probe:
        probe_pairs(spec)
    return spec


def _variants(spec: Spec, method: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``cfg`` and each grid variant of it."""
    grid = spec.data["grid"].get(method, {})
    return [cfg] + [{**cfg, **row} for key, values in grid.items() for row in grid_rows(key, values)]


def check_trial_configs(spec: Spec) -> None:
    """Every method's fixed config on every pair (and grid variant) through ``resolve_config``.

    This catches bad values and method-specific checks; checks on files the teacher stage has yet to write
    wait until it has written them. Also: the ASHA grace period fits each config's epochs, and the search
    space builds.
    """
    from trainables.config import resolve_config
    from trainables.methods import get_method

    future = spec.future_teachers() if spec.data["teacher"]["train"] else {}
    for m in spec.methods:
        needs_teacher = get_method(m).needs_teacher
        for pair in spec.pairs:
            cfg = spec.pair_config(m, pair, future)
            cfg.pop("pair")
            cfg["seed"] = spec.data["seeds"][0]
            pending = future.get(pair["teacher"], {}).get("trajectory") if needs_teacher else None
            for variant in _variants(spec, m, cfg):
                try:
                    resolved = resolve_config(variant)
                except ConfigError as err:
                    if pending and pending in str(err):
                        continue
                    raise SpecError(f"method '{m}' on {pair_label(pair)}: {err}") from None
                _check_grace_period(spec, m, resolved["epochs"])
                _check_selection_split(spec, m, resolved)
            if spec.search is not None:
                spec.method_space(m, pair)


def _check_grace_period(spec: Spec, method: str, epochs: int) -> None:
    scheduler = spec.data["scheduler"]
    if scheduler and scheduler["grace_period"] > epochs:
        raise SpecError(
            f"scheduler.grace_period ({scheduler['grace_period']}) exceeds epochs ({epochs}) of method '{method}'"
        )


def _check_selection_split(spec: Spec, method: str, resolved: Mapping[str, Any]) -> None:
    """A search or ASHA selects on validation: with ``val_fraction: 0`` it would have only test to select on."""
    if float(resolved.get("val_fraction", 1)) > 0:
        return
    selector = "search" if spec.search is not None else "scheduler (ASHA)" if spec.data["scheduler"] else None
    if selector:
        raise SpecError(
            f"method '{method}' trains with val_fraction 0 (no validation split), so the {selector} would select "
            "on test: use a grid or fixed configs with val_fraction 0, or a val_fraction > 0"
        )


def check_teacher_configs(spec: Spec) -> None:
    """The config of every teacher the teacher stage will train, through ``resolve_config``."""
    from trainables.config import resolve_config

    if not spec.data["teacher"]["train"]:
        return
    for arch in spec.archs_to_train():
        try:
            resolve_config(spec.teacher_config(arch, "/tmp/unused"))
        except ConfigError as err:
            raise SpecError(f"teacher '{arch}': {err}") from None


def check_files(spec: Spec) -> None:
    """The files the spec names exist: given teacher checkpoints and trajectory folders.

    The place for checks on what trials will read from disk, before any config is resolved against it
    (and before Ray starts).
    """
    teacher = spec.data["teacher"]
    for arch, file in teacher["checkpoints"].items():
        if not Path(file).is_file():
            raise SpecError(f"teacher checkpoint for '{arch}' not found: {file} (teacher.checkpoints.{arch})")
    for arch, folder in teacher["trajectories"].items():
        if not Path(folder).is_dir():
            raise SpecError(f"teacher trajectory folder for '{arch}' not found: {folder}")


# -- pair probe ---------------------------------------------------------------------------------------------------
def _probe_shape(spec: Spec) -> tuple[int, int]:
    """``(num_classes, image side)`` of the study's data set, from its declaration."""
    from trainables.data import dataset_info

    return dataset_info(spec.data["data"]["dataset"]).shape(spec.data["config"])


def _probe_data(num_classes: int, side: int, n: int) -> Any:
    """``n`` random images of the study's shape, for methods that look at the data when built."""
    import torch

    from trainables.data import DataBundle, TensorSplit

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes
    half = (0.5, 0.5, 0.5)
    split = TensorSplit(images, labels, half, half)
    return DataBundle("probe", split, split, split, num_classes, (3, side, side))


PROBE_SETTINGS = {"device": "cpu", "amp": "off", "channels_last": False, "compile": False, "teacher_budget": None,
                  "teacher_store": False, "teacher_stream": False}
PROBE_SIZES = (32, 512)
"""Probe data sizes: small first; a method that needs more data when built (e.g. the 256 points of
supervision complexity) gets the larger set before its error counts."""


def _probe_one(cls: Any, cfg: dict[str, Any], pair: Mapping[str, str], num_classes: int, side: int, n: int) -> None:
    import torch

    from trainables import models
    from trainables.methods import MethodContext
    from trainables.teacher import FrozenTeacher, build_source

    data = _probe_data(num_classes, side, n)
    batch = next(data.train.batches(2, shuffle=False, augment=False))
    torch.manual_seed(0)
    student = models.create(pair["student"], num_classes=num_classes)
    teacher = None
    if cls.needs_teacher:
        network = FrozenTeacher(models.create(pair["teacher"], num_classes=num_classes))
        teacher = build_source(cfg, cls.teacher_plan(cfg), network, data.train)
    ctx = MethodContext(num_classes, (3, side, side), torch.device("cpu"), Path("/nonexistent"), int(cfg["epochs"]),
                        extras={"data": data})
    method = cls(student, teacher, cfg, ctx)
    method.train()
    if teacher is not None:
        teacher.on_epoch_start(0)
    method.on_epoch_start(0)
    with torch.no_grad():
        out = method.training_step(batch, 0)
        method.eval()
        logits = method.predict(batch.x)
    if out.logits.shape[-1] != num_classes or logits.shape[-1] != num_classes:
        raise ValueError(f"logits have {logits.shape[-1]} classes, expected {num_classes}")


def probe_pairs(spec: Spec) -> None:
    """Build each (method, pair) on fresh models; run its first epoch start and one step on two random images.

    Errors about files (a teacher trajectory not trained yet) are not connection problems and are ignored;
    anything else means the method cannot join this teacher and student.
    """
    import torch

    from trainables.config import resolve_config
    from trainables.errors import CheckpointError, DataRootError, TeacherBudgetExceeded
    from trainables.methods import get_method

    num_classes, side = _probe_shape(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for pair in spec.pairs:
            for m in spec.methods:
                cls = get_method(m)
                cfg = spec.pair_config(m, pair)
                cfg.pop("pair")
                cfg.setdefault("teacher_checkpoint", "<probe>")
                cfg.update(PROBE_SETTINGS)
                try:
                    cfg = resolve_config(cfg)
                except ConfigError:
                    continue  # the real config was validated above; a probe-only setting must not fail it
                sizes = PROBE_SIZES if side <= 64 else PROBE_SIZES[:1]
                for i, n in enumerate(sizes):
                    try:
                        _probe_one(cls, cfg, pair, num_classes, side, n)
                        break
                    except (CheckpointError, DataRootError, FileNotFoundError, TeacherBudgetExceeded):
                        break
                    except Exception as err:  # noqa: BLE001 - anything else: this pair does not connect
                        if isinstance(err, ConfigError) and i + 1 < len(sizes):
                            continue  # maybe the probe data was too small: try the larger set
                        text = " ".join(str(err).split())[:300]
                        raise SpecError(
                            f"method '{m}' cannot connect teacher '{pair['teacher']}' to student "
                            f"'{pair['student']}': {type(err).__name__}: {text}"
                        ) from None
    finally:
        torch.set_num_threads(threads)
