"""A study spec: YAML -> one validated, resolved dict, checked completely before anything runs.

Every problem is a ``SpecError`` with one line naming the key, the value and what is allowed. Validation
imports ``trainables`` (registries of methods, models, data sets) but never Ray, writes nothing, and builds
every trial's fixed config through ``trainables.config.resolve_config`` so a key a method does not have is
caught here, not in trial 17 an hour later. Pairs are probed by building each method on freshly
initialised models and running one forward pass on two random images (catches a pair a method cannot
connect).

``SPEC_DEFAULTS`` is the whole format (README "Study specs" documents each key).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError, did_you_mean

from .spaces import Choice, MethodSpace, available_knobs, parse_dist

SPEC_DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "storage_path": "./studies",
    "data": {"dataset": "digits", "root": None},
    "teacher": {"train": True, "epochs": 240, "seed": 0, "config": {}, "checkpoints": {}, "trajectories": {}},
    "pairs": [],
    "methods": [],
    "config": {},
    "method_config": {},
    "seeds": [0],
    "search": None,
    "grid": {},
    "scheduler": None,
    "resources": {"cpu": 1, "gpu": 0},
    "max_concurrent_trials": None,
    "max_failures": 1,
    "checkpoint_keep": 2,
    "metric": "val/top1",
    "mode": "max",
    "report": True,
    "ray": {"address": None, "num_cpus": None},
}
SEARCH_DEFAULTS: dict[str, Any] = {"trials": 8, "seed": 0, "defaults_first": True, "final": True, "space": {}}
SCHEDULER_DEFAULTS: dict[str, Any] = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
PAIR_KEYS = ("teacher", "student")

STUDY_MANAGED = ("method", "student", "teacher", "teacher_checkpoint", "seed", "dataset", "data_root")
"""Trial keys the study sets itself (from pairs, seeds, data, the teacher stage); not allowed in ``config``."""

RUNTIME_KEYS = ("device", "amp", "channels_last", "compile", "eval_batch_size", "gpu_memory_fraction", "batch_size")
"""Global ``config`` keys that also apply to the teacher stage (besides data keys)."""

TRAJECTORY_KEY = "teacher_trajectory"
"""Config key through which a method (online distillation) receives the teacher's checkpoint trajectory."""

DATA_FOLDERS = {"cifar100": "cifar-100-python", "cifar10": "cifar-10-batches-py", "imagenet": "train"}
SHAPES = {"cifar100": (100, 32), "cifar10": (10, 32), "imagenet": (1000, 224), "digits": (10, 32)}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ConfigError):
    """A spec problem, as one line for the person who wrote the spec."""


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


def suggest(word: str, choices) -> str:
    """' (did you mean X?)': the closest choice, else the only one that starts with or contains ``word``."""
    close = did_you_mean(word, choices)
    if close:
        return close
    hits = [c for c in choices if str(c).startswith(word) or (len(word) >= 3 and word in str(c))]
    return f" (did you mean '{hits[0]}'?)" if len(hits) == 1 else ""


# -- small checks -----------------------------------------------------------------------------------------------
def _check_keys(section: str, given: Mapping[str, Any], allowed: Mapping[str, Any] | set[str]) -> None:
    for key in given:
        if key not in allowed:
            where = f"{section}.{key}" if section else str(key)
            raise SpecError(
                f"unknown spec key '{where}'{suggest(str(key), allowed)}; allowed: {', '.join(sorted(allowed))}"
            )


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"'{key}' must be a mapping, got {type(value).__name__} {value!r}")
    return dict(value)


def _int(value: Any, key: str, low: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"'{key}' must be an integer, got {value!r}")
    if low is not None and value < low:
        raise SpecError(f"'{key}' must be >= {low}, got {value}")
    return value


def _number(value: Any, key: str, low: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"'{key}' must be a number, got {value!r}")
    if value < low or (strict and value == low):
        raise SpecError(f"'{key}' must be {'>' if strict else '>='} {low}, got {value}")
    return value


def _path(value: Any, key: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise SpecError(f"'{key}' must be a path, got {value!r}")
    return str(Path(os.path.expanduser(str(value))).absolute())


def json_key(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def teacher_folder(study_dir: str | Path, arch: str) -> Path:
    """Where the teacher stage writes ``arch``'s trajectory and ``final.pt``."""
    return Path(study_dir) / "teachers" / "trajectories" / arch


def grid_columns(key: str) -> list[str]:
    """``a+b`` names keys that vary together (rows of values); ``a`` is one key."""
    return [k.strip() for k in str(key).split("+")]


def grid_rows(key: str, values: list[Any]) -> list[dict[str, Any]]:
    """The variants one grid entry stands for: ``[{key: value}]``, or for ``a+b`` one dict per row."""
    columns = grid_columns(key)
    if len(columns) == 1:
        return [{key: v} for v in values]
    return [dict(zip(columns, row)) for row in values]


def pair_label(pair: Mapping[str, str]) -> str:
    """The ``pair`` value trials carry: ``<teacher>-<student>``."""
    return f"{pair['teacher']}-{pair['student']}"


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
        base = Path(storage) if "://" not in storage else Path(SPEC_DEFAULTS["storage_path"]).absolute()
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

    def base_config(self, method: str) -> dict[str, Any]:
        """The fixed config of one method (without pair, seed and teacher files)."""
        from trainables.config import allowed_keys
        from trainables.methods import get_method

        keys = allowed_keys(get_method(method).defaults)
        cfg: dict[str, Any] = {"method": method, "dataset": self.data["data"]["dataset"]}
        if self.data["data"]["root"]:
            cfg["data_root"] = self.data["data"]["root"]
        cfg.update({k: v for k, v in self.data["config"].items() if k in keys})
        cfg.update(self.data["method_config"].get(method, {}))
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
        cfg = self.base_config(method)
        cfg.update({"pair": pair_label(pair), "student": pair["student"], "teacher": pair["teacher"]})
        if cls.needs_teacher:
            files = self.teacher_files(pair["teacher"], trained)
            if files.get("checkpoint"):
                cfg["teacher_checkpoint"] = files["checkpoint"]
            if TRAJECTORY_KEY in allowed_keys(cls.defaults) and files.get("trajectory"):
                cfg.setdefault(TRAJECTORY_KEY, files["trajectory"])
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
        """The Optuna space of ``method`` (knobs fixed by ``config``/``method_config`` are not searched)."""
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
        fixed = set(self.data["method_config"].get(method, {})) | set(self.data["config"])
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
    """Check every key and value; fill defaults; resolve paths. Raises SpecError (one line)."""
    from trainables import models
    from trainables.config import allowed_keys, resolve_config
    from trainables.data import list_datasets
    from trainables.methods import METHODS

    raw = dict(raw)
    _check_keys("", raw, SPEC_DEFAULTS)
    spec: dict[str, Any] = copy.deepcopy(SPEC_DEFAULTS)
    for key, value in raw.items():
        if isinstance(SPEC_DEFAULTS[key], dict) and key not in ("search", "scheduler"):
            given = _mapping(value, key)
            if key in ("data", "teacher", "resources", "ray"):
                _check_keys(key, given, SPEC_DEFAULTS[key])
                spec[key].update(given)
            else:
                spec[key] = given
        else:
            spec[key] = value

    name = spec["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(f"'name' must be letters, digits, '_', '-' or '.', got {name!r}")
    if not isinstance(spec["storage_path"], str) or not spec["storage_path"]:
        raise SpecError(f"'storage_path' must be a folder or URI, got {spec['storage_path']!r}")
    if "://" not in spec["storage_path"]:
        spec["storage_path"] = _path(spec["storage_path"], "storage_path")

    # data
    data = spec["data"]
    if data["dataset"] not in list_datasets():
        raise SpecError(
            f"unknown dataset '{data['dataset']}'{suggest(str(data['dataset']), list_datasets())}; "
            f"allowed: {', '.join(list_datasets())}"
        )
    if data["root"] is not None:
        data["root"] = _path(data["root"], "data.root")
    if data["dataset"] in DATA_FOLDERS:
        if not data["root"]:
            raise SpecError(f"dataset '{data['dataset']}' needs data.root (a local folder holding it)")
        expected = Path(data["root"]) / DATA_FOLDERS[data["dataset"]]
        if not expected.exists():
            raise SpecError(f"data root for '{data['dataset']}' not found: expected {expected}")

    # methods and pairs
    methods = spec["methods"]
    if isinstance(methods, str):
        methods = spec["methods"] = [methods]
    if not isinstance(methods, list) or not methods:
        raise SpecError("'methods' must be a non-empty list of method names; allowed: " + ", ".join(sorted(METHODS)))
    for m in methods:
        if not isinstance(m, str) or m not in METHODS:
            raise SpecError(
                f"unknown method '{m}'{suggest(str(m), METHODS)}; allowed: {', '.join(sorted(METHODS))}"
            )
        if m == "teacher":
            raise SpecError("'teacher' is not a study method: the teacher stage trains teachers (teacher.train)")
    if len(set(methods)) != len(methods):
        raise SpecError(f"'methods' lists a method twice: {methods}")
    pairs = spec["pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise SpecError("'pairs' must be a non-empty list of {teacher: ARCH, student: ARCH}")
    archs = models.list_models()
    for i, pair in enumerate(pairs):
        if not isinstance(pair, Mapping):
            raise SpecError(f"pairs[{i}] must be a mapping {{teacher: ARCH, student: ARCH}}, got {pair!r}")
        _check_keys(f"pairs[{i}]", pair, set(PAIR_KEYS))
        for role in PAIR_KEYS:
            arch = pair.get(role)
            if arch is None:
                raise SpecError(f"pairs[{i}] needs '{role}' (an architecture)")
            if arch not in archs:
                raise SpecError(
                    f"unknown {role} architecture '{arch}' in pairs[{i}]{suggest(str(arch), archs)}; "
                    f"allowed: {', '.join(archs)}"
                )
    labels = [pair_label(p) for p in pairs]
    if len(set(labels)) != len(labels):
        raise SpecError(f"'pairs' lists a pair twice: {labels}")

    # fixed config
    all_keys: set[str] = set()
    method_keys = {m: allowed_keys(METHODS[m].defaults) for m in methods}
    for keys in method_keys.values():
        all_keys |= keys
    for key in spec["config"]:
        if key in STUDY_MANAGED:
            raise SpecError(f"'config.{key}' is set by the study (pairs, seeds, data, teacher); remove it from config")
        if key not in all_keys:
            raise SpecError(
                f"unknown config key 'config.{key}'{suggest(str(key), all_keys)}; "
                f"allowed: keys of the loop, data set or methods ({', '.join(sorted(all_keys))})"
            )
    _check_keys("method_config", spec["method_config"], set(methods))
    for m, cfg in spec["method_config"].items():
        cfg = spec["method_config"][m] = _mapping(cfg, f"method_config.{m}")
        for key in cfg:
            if key in STUDY_MANAGED:
                raise SpecError(f"'method_config.{m}.{key}' is set by the study; remove it")
            if key not in method_keys[m]:
                raise SpecError(
                    f"method '{m}' has no config key '{key}'{suggest(str(key), method_keys[m])}; "
                    f"allowed: {', '.join(sorted(method_keys[m]))}"
                )

    # seeds
    seeds = spec["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = spec["seeds"] = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise SpecError(f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    for s in seeds:
        _int(s, "seeds[]", 0)
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"'seeds' lists a seed twice: {seeds}")

    # teacher
    t = spec["teacher"]
    if not isinstance(t["train"], bool):
        raise SpecError(f"'teacher.train' must be true or false, got {t['train']!r}")
    _int(t["epochs"], "teacher.epochs", 1)
    _int(t["seed"], "teacher.seed", 0)
    t["config"] = _mapping(t["config"], "teacher.config")
    teacher_keys = allowed_keys(METHODS["teacher"].defaults)
    for key in t["config"]:
        if key in ("method", "teacher", "dataset", "data_root", "epochs", "seed", "trajectory_dir"):
            raise SpecError(f"'teacher.config.{key}' is set by the study (use teacher.epochs / teacher.seed / data)")
        if key not in teacher_keys:
            raise SpecError(
                f"unknown teacher config key 'teacher.config.{key}'{suggest(str(key), teacher_keys)}; "
                f"allowed: {', '.join(sorted(teacher_keys))}"
            )
    for section in ("checkpoints", "trajectories"):
        t[section] = _mapping(t[section], f"teacher.{section}")
        for arch, p in t[section].items():
            if arch not in archs:
                raise SpecError(
                    f"unknown architecture '{arch}' in teacher.{section}{suggest(str(arch), archs)}; "
                    f"allowed: {', '.join(archs)}"
                )
            t[section][arch] = _path(p, f"teacher.{section}.{arch}")
            target = Path(t[section][arch])
            if section == "checkpoints" and not target.is_file():
                raise SpecError(f"teacher checkpoint for '{arch}' not found: {target} (teacher.checkpoints.{arch})")
            if section == "trajectories" and not target.is_dir():
                raise SpecError(f"teacher trajectory folder for '{arch}' not found: {target}")
    needs_teacher = any(METHODS[m].needs_teacher for m in methods)
    if needs_teacher and not t["train"]:
        for pair in pairs:
            if pair["teacher"] not in t["checkpoints"]:
                raise SpecError(
                    f"no checkpoint for teacher '{pair['teacher']}': set teacher.checkpoints.{pair['teacher']} "
                    "or teacher.train: true"
                )

    # search / grid / scheduler
    if spec["search"] is not None:
        given = _mapping(spec["search"], "search")
        _check_keys("search", given, SEARCH_DEFAULTS)
        search = {**copy.deepcopy(SEARCH_DEFAULTS), **given}
        _int(search["trials"], "search.trials", 1)
        _int(search["seed"], "search.seed", 0)
        for key in ("defaults_first", "final"):
            if not isinstance(search[key], bool):
                raise SpecError(f"'search.{key}' must be true or false, got {search[key]!r}")
        search["space"] = _mapping(search["space"], "search.space")
        _check_keys("search.space", search["space"], set(methods))
        for m, over in search["space"].items():
            over = search["space"][m] = _mapping(over, f"search.space.{m}")
            knobs = available_knobs(m, method_keys[m])
            for key, value in over.items():
                if key not in knobs:
                    raise SpecError(
                        f"'{key}' is not a search knob of '{m}'{suggest(str(key), knobs)}; "
                        f"allowed: {', '.join(knobs) or '(none)'}"
                    )
                try:
                    dist = parse_dist(value, knobs[key].dist)
                except ValueError as err:
                    raise SpecError(f"bad range for 'search.space.{m}.{key}': {err}") from None
                if dist is None:  # a scalar: fixed, not searched
                    spec["method_config"].setdefault(m, {})[key] = value
                elif isinstance(dist, Choice):
                    over[key] = list(dist.choices)
        spec["search"] = search
        if spec["grid"]:
            raise SpecError("'grid' and 'search' exclude each other: a study either searches or runs a grid")
    for m, grid in spec["grid"].items():
        if m not in methods:
            raise SpecError(f"'grid.{m}': method '{m}' is not in methods ({', '.join(methods)})")
        grid = spec["grid"][m] = _mapping(grid, f"grid.{m}")
        for key, values in grid.items():
            columns = grid_columns(key)
            for column in columns:
                if column in STUDY_MANAGED:
                    raise SpecError(f"'grid.{m}.{key}' is set by the study (use pairs / seeds)")
                if column not in method_keys[m]:
                    raise SpecError(
                        f"method '{m}' has no config key '{column}' (grid.{m}){suggest(column, method_keys[m])}; "
                        f"allowed: {', '.join(sorted(method_keys[m]))}"
                    )
            if not isinstance(values, list) or not values:
                raise SpecError(f"'grid.{m}.{key}' must be a non-empty list of values, got {values!r}")
            if len(columns) > 1:
                for row in values:
                    if not isinstance(row, list) or len(row) != len(columns):
                        raise SpecError(f"'grid.{m}.{key}': each row must list {len(columns)} values "
                                        f"({', '.join(columns)}), got {row!r}")
                firsts = [json_key(row[0]) for row in values]
                if len(set(firsts)) != len(firsts):
                    raise SpecError(f"'grid.{m}.{key}': the values of '{columns[0]}' must differ between rows")
            elif len({json_key(v) for v in values}) != len(values):
                raise SpecError(f"'grid.{m}.{key}' lists a value twice: {values}")
    if spec["scheduler"] is not None:
        given = _mapping(spec["scheduler"], "scheduler")
        _check_keys("scheduler", given, SCHEDULER_DEFAULTS)
        sched = {**SCHEDULER_DEFAULTS, **given}
        if sched["type"] != "asha":
            raise SpecError(f"scheduler.type must be 'asha' (or leave scheduler out), got {sched['type']!r}")
        _int(sched["grace_period"], "scheduler.grace_period", 1)
        _number(sched["reduction_factor"], "scheduler.reduction_factor", 1.0, strict=True)
        spec["scheduler"] = sched

    # run settings
    res = spec["resources"]
    _number(res["cpu"], "resources.cpu", 0.0, strict=True)
    _number(res["gpu"], "resources.gpu")
    if res["gpu"] > 1 and res["gpu"] != int(res["gpu"]):
        raise SpecError(f"'resources.gpu' must be a fraction up to 1 or a whole number, got {res['gpu']}")
    _int(spec["max_concurrent_trials"], "max_concurrent_trials", 1, allow_none=True)
    _int(spec["max_failures"], "max_failures", 0)
    _int(spec["checkpoint_keep"], "checkpoint_keep", 1)
    if not isinstance(spec["metric"], str) or not spec["metric"].startswith("val/"):
        raise SpecError(f"'metric' must be a validation metric (val/...), never test; got {spec['metric']!r}")
    if spec["mode"] not in ("max", "min"):
        raise SpecError(f"'mode' must be max or min, got {spec['mode']!r}")
    if not isinstance(spec["report"], bool):
        raise SpecError(f"'report' must be true or false, got {spec['report']!r}")
    _int(spec["ray"]["num_cpus"], "ray.num_cpus", 1, allow_none=True)

    result = Spec(spec)
    # every trial's fixed config through the real resolver (catches bad values and method-specific checks);
    # checks on files the teacher stage has yet to write wait until it has written them
    future = result.future_teachers() if t["train"] else {}
    for m in methods:
        for pair in pairs:
            cfg = result.pair_config(m, pair, future)
            cfg.pop("pair")
            cfg["seed"] = seeds[0]
            pending = future.get(pair["teacher"], {}).get("trajectory") if METHODS[m].needs_teacher else None
            variants = [cfg] + [{**cfg, **row} for key, values in spec["grid"].get(m, {}).items()
                                for row in grid_rows(key, values)]
            for variant in variants:
                try:
                    resolved = resolve_config(variant)
                except ConfigError as err:
                    if pending and pending in str(err):
                        continue
                    raise SpecError(f"method '{m}' on {pair_label(pair)}: {err}") from None
            if spec["scheduler"] and spec["scheduler"]["grace_period"] > resolved["epochs"]:
                raise SpecError(
                    f"scheduler.grace_period ({spec['scheduler']['grace_period']}) exceeds epochs "
                    f"({resolved['epochs']}) of method '{m}'"
                )
            if spec["search"] is not None:
                result.method_space(m, pair)
    if needs_teacher and t["train"]:
        for arch in result.archs_to_train():
            try:
                resolve_config(result.teacher_config(arch, "/tmp/unused"))
            except ConfigError as err:
                raise SpecError(f"teacher '{arch}': {err}") from None
    from .preflight import check_files

    check_files(result)  # data, teacher and trajectory files opened and checked (study/preflight.py)
    if probe:
        probe_pairs(result)
    return result


# -- pair probe ---------------------------------------------------------------------------------------------------
def _probe_shape(spec: Spec) -> tuple[int, int]:
    dataset = spec.data["data"]["dataset"]
    if dataset == "synthetic":
        cfg = spec.data["config"]
        return int(cfg.get("synthetic_classes", 100)), int(cfg.get("synthetic_image_size", 32))
    return SHAPES.get(dataset, (10, 32))


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


PROBE_SETTINGS = {"device": "cpu", "amp": "off", "channels_last": False, "compile": False, "teacher_budget": None}
PROBE_SIZES = (32, 512)
"""Probe data sizes: small first; a method that needs more data when built (e.g. the 256 points of
supervision complexity) gets the larger set before its error counts."""


def _probe_one(cls: Any, cfg: dict[str, Any], pair: Mapping[str, str], num_classes: int, side: int, n: int) -> None:
    import torch

    from trainables import models
    from trainables.methods import MethodContext
    from trainables.teacher import FrozenTeacher

    data = _probe_data(num_classes, side, n)
    batch = next(data.train.batches(2, shuffle=False, augment=False))
    torch.manual_seed(0)
    student = models.create(pair["student"], num_classes=num_classes)
    teacher = FrozenTeacher(models.create(pair["teacher"], num_classes=num_classes)) if cls.needs_teacher else None
    ctx = MethodContext(num_classes, (3, side, side), torch.device("cpu"), Path("/nonexistent"), int(cfg["epochs"]),
                        extras={"data": data})
    method = cls(student, teacher, cfg, ctx)
    method.train()
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
