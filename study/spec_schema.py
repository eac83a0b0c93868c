"""The study spec's format: pydantic models, one per section, unknown keys refused.

pydantic does the checking (types, ranges, defaults, unknown keys, registries, checks across sections);
``parse_spec`` turns its first error into the project's one line: the key path, the value, what is allowed
and, for an unknown key, a did-you-mean. The models are strict on purpose: YAML's ``1`` is not ``true``,
``2.0`` is not an integer, and a number keeps the type it was written with (``cpu: 2`` stays ``2`` in the
resolved ``spec.yaml``). Checks that build trial configs (``trainables.config.resolve_config``) are not
here but in ``study.spec``: they need the whole validated spec.

The registries (methods, models, data sets) are imported when a spec is checked, not when this module is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from trainables.errors import ConfigError, did_you_mean

from .spaces import Choice, available_knobs, parse_dist

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

STUDY_MANAGED = ("method", "student", "teacher", "teacher_checkpoint", "seed", "dataset", "data_root")
"""Trial keys the study sets itself (from pairs, seeds, data, the teacher stage); not allowed in ``config``."""

TEACHER_MANAGED = ("method", "teacher", "dataset", "data_root", "epochs", "seed", "trajectory_dir")
"""Teacher-stage keys the study sets itself; not allowed in ``teacher.config``."""


class SpecError(ConfigError):
    """A spec problem, as one line for the person who wrote the spec."""


def suggest(word: str, choices: Iterable[Any]) -> str:
    """' (did you mean X?)': the closest choice, else the only one that starts with or contains ``word``."""
    choices = list(choices)
    close = did_you_mean(word, choices)
    if close:
        return close
    hits = [c for c in choices if str(c).startswith(word) or (len(word) >= 3 and word in str(c))]
    return f" (did you mean '{hits[0]}'?)" if len(hits) == 1 else ""


def json_key(value: Any) -> str:
    """A value as sorted JSON: equal values, equal keys (to find a grid value listed twice)."""
    return json.dumps(value, sort_keys=True, default=str)


def grid_columns(key: str) -> list[str]:
    """``a+b`` names keys that vary together (rows of values); ``a`` is one key."""
    return [k.strip() for k in str(key).split("+")]


# -- errors the validators raise (``parse_spec`` turns them into lines) -------------------------------------------
def _fail(line: str) -> PydanticCustomError:
    """A finished one-line message (the check knows the key path itself)."""
    return PydanticCustomError("spec", "{line}", {"line": line})


def _unknown(kind: str, value: Any, choices: Iterable[Any]) -> PydanticCustomError:
    """'unknown KIND' at the key being validated: ``parse_spec`` adds the key path and the choices."""
    return PydanticCustomError("unknown_choice", "unknown {kind}", {"kind": kind, "value": value,
                                                                   "choices": sorted(map(str, choices))})


# -- registries -----------------------------------------------------------------------------------------------------
def _methods() -> dict[str, Any]:
    from trainables.methods import METHODS

    return METHODS


def _method_keys(method: str) -> set[str]:
    """The config keys of a method (loop, data and its own)."""
    from trainables.config import allowed_keys

    return allowed_keys(_methods()[method].defaults)


def _archs() -> list[str]:
    from trainables import models

    return models.list_models()


# -- value types ----------------------------------------------------------------------------------------------------
def _number(value: Any) -> int | float:
    """An int or a float, kept as given (pydantic's float would turn ``2`` into ``2.0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("number_type", "not a number")
    return value


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _absolute(value: str) -> str:
    return str(Path(os.path.expanduser(value)).absolute())


def _none_as_empty(value: Any) -> Any:
    return {} if value is None else value


def _name_as_list(value: Any) -> Any:
    """``methods: kd`` means ``[kd]``."""
    return [value] if isinstance(value, str) else value


def _seed_as_list(value: Any) -> Any:
    """``seeds: 3`` means ``[3]``."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


def _architecture(value: str) -> str:
    if value not in _archs():
        raise _unknown("architecture", value, _archs())
    return value


def _study_method(value: str) -> str:
    if value not in _methods():
        raise _unknown("method", value, _methods())
    if value == "teacher":
        raise _fail("'teacher' is not a study method: the teacher stage trains teachers (teacher.train)")
    return value


def _registered_dataset(value: str) -> str:
    from trainables.data import list_datasets

    if value not in list_datasets():
        raise _unknown("dataset", value, list_datasets())
    return value


def _validation_metric(value: str) -> str:
    if not value.startswith("val/"):
        raise _fail(f"'metric' must be a validation metric (val/...), never test; got {value!r}")
    return value


Number = Annotated[int | float, BeforeValidator(_number)]
LocalPath = Annotated[str, BeforeValidator(_fspath), Field(min_length=1, description="a path"),
                      AfterValidator(_absolute)]
Architecture = Annotated[str, AfterValidator(_architecture)]
Settings = Annotated[dict[str, Any], BeforeValidator(_none_as_empty)]
"""``{key: value}`` (``config``, ``teacher.config``); a ``null`` is empty."""
PerMethod = Annotated[dict[str, Settings], BeforeValidator(_none_as_empty)]
"""``{method: {key: value}}`` (``method_config``, ``grid``, ``search.space``); a ``null`` is empty."""


# -- sections -------------------------------------------------------------------------------------------------------
class Section(BaseModel):
    """A spec section: only its own keys, strict types."""

    model_config = ConfigDict(extra="forbid", strict=True)


class DataSection(Section):
    dataset: Annotated[str, AfterValidator(_registered_dataset)] = "digits"
    root: LocalPath | None = Field(None, description="a path")

    @model_validator(mode="after")
    def _root_holds_the_data(self) -> DataSection:
        """A data set that declares a root needs one, holding the folders it declares."""
        from trainables.data import dataset_info

        info = dataset_info(self.dataset)
        if not info.needs_root:
            return self
        if not self.root:
            raise _fail(f"dataset '{self.dataset}' needs data.root (a local folder holding it)")
        missing = info.missing_folder(self.root)
        if missing is not None:
            raise _fail(f"data root for '{self.dataset}' not found: expected {missing}")
        return self


class TeacherSection(Section):
    train: bool = True
    epochs: int = Field(240, ge=1)
    seed: int = Field(0, ge=0)
    config: Settings = {}
    checkpoints: Annotated[dict[Architecture, LocalPath], BeforeValidator(_none_as_empty)] = {}
    trajectories: Annotated[dict[Architecture, LocalPath], BeforeValidator(_none_as_empty)] = {}

    @field_validator("config")
    @classmethod
    def _teacher_keys(cls, config: dict[str, Any]) -> dict[str, Any]:
        allowed = _method_keys("teacher")
        for key in config:
            if key in TEACHER_MANAGED:
                raise _fail(f"'teacher.config.{key}' is set by the study (use teacher.epochs / teacher.seed / data)")
            if key not in allowed:
                raise _fail(f"unknown teacher config key 'teacher.config.{key}'{suggest(str(key), allowed)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        return config

class Pair(Section):
    teacher: str = Field(description="an architecture")
    student: str = Field(description="an architecture")
    method_config: PerMethod = {}
    """This pair's own ``{method: {key: value}}``, over the top-level ``method_config`` (``Spec.method_settings``)."""

    @field_validator("teacher", "student")
    @classmethod
    def _registered(cls, arch: str, info: ValidationInfo) -> str:
        if arch not in _archs():
            raise _unknown(f"{info.field_name} architecture", arch, _archs())
        return arch

    @model_serializer(mode="wrap")
    def _without_empty_method_config(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A pair without its own settings resolves to ``{teacher, student}``, as before pairs could carry any:
        the ``spec.yaml`` of such a study is unchanged."""
        out = handler(self)
        if not out.get("method_config"):
            out.pop("method_config", None)
        return out


class SearchSection(Section):
    trials: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)
    defaults_first: bool = True
    final: bool = True
    space: PerMethod = {}


class SchedulerSection(Section):
    type: Literal["asha"] = Field("asha", description="'asha' (or leave scheduler out)")
    grace_period: int = Field(1, ge=1)
    reduction_factor: Number = Field(2, gt=1)


class Resources(Section):
    cpu: Number = Field(1, gt=0)
    gpu: Number = Field(0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _gpu_share(cls, gpu: int | float) -> int | float:
        if gpu > 1 and gpu != int(gpu):
            raise _fail(f"'resources.gpu' must be a fraction up to 1 or a whole number, got {gpu}")
        return gpu


class RaySection(Section):
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)


def _section(model: type[Section]) -> Any:
    """A section field: a ``null`` or missing section is the section's defaults."""
    return Field(default_factory=model)


class StudySpec(Section):
    """The whole spec; field order is the order of the resolved ``spec.yaml``."""

    name: str = Field(None, pattern=NAME_PATTERN, description="letters, digits, '_', '-' or '.'",
                      validate_default=True)
    description: str | None = ""
    storage_path: str = Field("./studies", min_length=1, description="a folder or URI", validate_default=True)
    data: Annotated[DataSection, BeforeValidator(_none_as_empty)] = _section(DataSection)
    teacher: Annotated[TeacherSection, BeforeValidator(_none_as_empty)] = _section(TeacherSection)
    pairs: list[Pair] = Field([], min_length=1, description="a non-empty list of {teacher: ARCH, student: ARCH}",
                              validate_default=True)
    methods: Annotated[list[Annotated[str, AfterValidator(_study_method)]], BeforeValidator(_name_as_list)] = Field(
        [], description="a non-empty list of method names", validate_default=True
    )
    config: Settings = {}
    method_config: PerMethod = {}
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_seed_as_list)] = Field(
        [0], min_length=1, description="a non-empty list of integers"
    )
    search: SearchSection | None = None
    grid: PerMethod = {}
    scheduler: SchedulerSection | None = None
    resources: Annotated[Resources, BeforeValidator(_none_as_empty)] = _section(Resources)
    max_concurrent_trials: int | None = Field(None, ge=1)
    scheduling: Literal["concurrent", "sequential"] = Field(
        "concurrent", description="concurrent (stages as a dependency graph) or sequential (one stage at a time)")
    max_concurrent_stages: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)
    checkpoint_keep: int = Field(2, ge=1)
    metric: Annotated[str, AfterValidator(_validation_metric)] = Field(
        "val/top1", description="a validation metric (val/...), never test"
    )
    mode: Literal["max", "min"] = Field("max", description="max or min")
    report: bool = True
    ray: Annotated[RaySection, BeforeValidator(_none_as_empty)] = _section(RaySection)

    @field_validator("storage_path")
    @classmethod
    def _local_storage_absolute(cls, value: str) -> str:
        return value if "://" in value else _absolute(value)

    @field_validator("pairs")
    @classmethod
    def _pairs_unique(cls, pairs: list[Pair]) -> list[Pair]:
        seen = [(p.teacher, p.student) for p in pairs]
        for i, pair in enumerate(seen):
            if pair in seen[:i]:
                raise _fail(f"'pairs' lists teacher '{pair[0]}' with student '{pair[1]}' twice (pairs[{i}])")
        return pairs

    @field_validator("methods")
    @classmethod
    def _methods_listed_once(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise _fail("'methods' must be a non-empty list of method names; allowed: "
                        + ", ".join(sorted(_methods())))
        if len(set(methods)) != len(methods):
            raise _fail(f"'methods' lists a method twice: {methods}")
        return methods

    @field_validator("seeds")
    @classmethod
    def _seeds_listed_once(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise _fail(f"'seeds' lists a seed twice: {seeds}")
        return seeds

    @model_validator(mode="after")
    def _across_sections(self) -> StudySpec:
        """Checks that read more than one section, in the order a reader of the spec meets them."""
        for check in (check_config_keys, check_method_config_keys, check_teachers_available, check_search_space,
                      check_grid_or_search, check_grid_keys):
            check(self)
        return self


# -- checks across sections (each raises one line) ----------------------------------------------------------------
def check_config_keys(spec: StudySpec) -> None:
    """``config`` keys: some listed method has them, and the study does not set them itself."""
    allowed = set().union(*(_method_keys(m) for m in spec.methods))
    for key in spec.config:
        if key in STUDY_MANAGED:
            raise _fail(f"'config.{key}' is set by the study (pairs, seeds, data, teacher); remove it from config")
        if key not in allowed:
            raise _fail(f"unknown config key 'config.{key}'{suggest(str(key), allowed)}; "
                        f"allowed: keys of the loop, data set or methods ({', '.join(sorted(allowed))})")


def check_method_config_keys(spec: StudySpec) -> None:
    """``method_config`` and each pair's own: listed methods only, each with keys of its own.

    A pair's key that ``grid`` also varies is refused: the grid would override the pair's value (or the pair
    would run the same trial once per grid value), and neither is what the spec says.
    """
    _check_method_settings("method_config", spec.method_config, spec.methods)
    for i, pair in enumerate(spec.pairs):
        where = f"pairs[{i}].method_config"
        _check_method_settings(where, pair.method_config, spec.methods)
        for m, cfg in pair.method_config.items():
            varied = {c for key in spec.grid.get(m, {}) for c in grid_columns(key)}
            for key in cfg:
                if key in varied:
                    raise _fail(f"'{where}.{m}.{key}' is also varied by grid.{m}: a key is either fixed per pair or "
                                "a grid key; remove one")


def _check_method_settings(where: str, given: Mapping[str, Mapping[str, Any]], methods: list[str]) -> None:
    """``{method: {key: value}}`` at ``where``: listed methods, keys of the method, none the study sets."""
    _check_methods_listed(where, given, methods)
    for m, cfg in given.items():
        allowed = _method_keys(m) - set(STUDY_MANAGED)
        for key in cfg:
            if key in STUDY_MANAGED:
                raise _fail(f"'{where}.{m}.{key}' is set by the study; remove it")
            if key not in allowed:
                raise _fail(f"method '{m}' has no config key '{key}' ({where}.{m}){suggest(str(key), allowed)}; "
                            f"allowed: {', '.join(sorted(allowed))}")


def _check_methods_listed(section: str, given: Mapping[str, Any], methods: list[str]) -> None:
    for m in given:
        if m not in methods:
            raise _fail(f"unknown spec key '{section}.{m}'{suggest(str(m), methods)}; allowed: "
                        f"{', '.join(sorted(methods))}")


def check_teachers_available(spec: StudySpec) -> None:
    """Without teacher training, every pair's teacher needs a checkpoint (when some method uses a teacher)."""
    if spec.teacher.train or not any(_methods()[m].needs_teacher for m in spec.methods):
        return
    for pair in spec.pairs:
        if pair.teacher not in spec.teacher.checkpoints:
            raise _fail(f"no checkpoint for teacher '{pair.teacher}': set teacher.checkpoints.{pair.teacher} "
                        "or teacher.train: true")


def check_search_space(spec: StudySpec) -> None:
    """``search.space``: knobs of the method, valid ranges; a plain value fixes the knob (into method_config)."""
    if spec.search is None:
        return
    _check_methods_listed("search.space", spec.search.space, spec.methods)
    for m, over in spec.search.space.items():
        knobs = available_knobs(m, _method_keys(m))
        for key, value in over.items():
            if key not in knobs:
                raise _fail(f"'{key}' is not a search knob of '{m}'{suggest(str(key), knobs)}; "
                            f"allowed: {', '.join(knobs) or '(none)'}")
            try:
                dist = parse_dist(value, knobs[key].dist)
            except ValueError as err:
                raise _fail(f"bad range for 'search.space.{m}.{key}': {err}") from None
            if dist is None:
                spec.method_config.setdefault(m, {})[key] = value
            elif isinstance(dist, Choice):
                over[key] = list(dist.choices)


def check_grid_or_search(spec: StudySpec) -> None:
    if spec.search is not None and spec.grid:
        raise _fail("'grid' and 'search' exclude each other: a study either searches or runs a grid")


def check_grid_keys(spec: StudySpec) -> None:
    """``grid``: listed methods, their own keys (``a+b`` columns too), non-empty lists of distinct values."""
    for m, grid in spec.grid.items():
        if m not in spec.methods:
            raise _fail(f"'grid.{m}': method '{m}' is not in methods ({', '.join(spec.methods)})")
        allowed = _method_keys(m)
        for key, values in grid.items():
            for column in grid_columns(key):
                if column in STUDY_MANAGED:
                    raise _fail(f"'grid.{m}.{key}' is set by the study (use pairs / seeds)")
                if column not in allowed:
                    raise _fail(f"method '{m}' has no config key '{column}' (grid.{m}){suggest(column, allowed)}; "
                                f"allowed: {', '.join(sorted(allowed))}")
            _check_grid_values(f"grid.{m}.{key}", grid_columns(key), values)


def _check_grid_values(where: str, columns: list[str], values: Any) -> None:
    if not isinstance(values, list) or not values:
        raise _fail(f"'{where}' must be a non-empty list of values, got {values!r}")
    if len(columns) == 1:
        if len({json_key(v) for v in values}) != len(values):
            raise _fail(f"'{where}' lists a value twice: {values}")
        return
    for row in values:
        if not isinstance(row, list) or len(row) != len(columns):
            raise _fail(f"'{where}': each row must list {len(columns)} values ({', '.join(columns)}), got {row!r}")
    firsts = [json_key(row[0]) for row in values]
    if len(set(firsts)) != len(firsts):
        raise _fail(f"'{where}': the values of '{columns[0]}' must differ between rows")


# -- pydantic's errors as the project's one line ----------------------------------------------------------------------
def parse_spec(raw: Mapping[str, Any]) -> StudySpec:
    """Validate a raw spec; the first problem is a SpecError of one line."""
    try:
        return StudySpec.model_validate(dict(raw))
    except ValidationError as err:
        raise SpecError(error_line(err)) from None


def error_line(err: ValidationError) -> str:
    """The line for the first error (an unknown key first: a typo explains the errors that follow it)."""
    errors = err.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    return _line(first)


TYPE_WORDS = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "number_type": "a number", "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "string_too_short": "a non-empty string", "too_short": "non-empty",
}
"""What a value of the wrong type should have been, by pydantic error type."""


def _line(e: ErrorDetails) -> str:
    loc, kind, ctx, value = tuple(e["loc"]), e["type"], e.get("ctx") or {}, e.get("input")
    key = key_path(loc)
    if kind == "spec":
        return str(ctx["line"])
    if kind == "unknown_choice":
        choices = ctx["choices"]
        return (f"unknown {ctx['kind']} '{ctx['value']}' in {key}{suggest(str(ctx['value']), choices)}; "
                f"allowed: {', '.join(choices)}")
    if kind == "extra_forbidden":
        allowed = _model_at(loc[:-1]).model_fields
        return f"unknown spec key '{key}'{suggest(str(loc[-1]), allowed)}; allowed: {', '.join(sorted(allowed))}"
    field = _field_at(loc)
    if kind == "missing":
        what = f" ({field.description})" if field is not None and field.description else ""
        return f"{key_path(loc[:-1])} needs '{loc[-1]}'{what}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"'{key}' must be {'>=' if 'ge' in ctx else '>'} {ctx.get('ge', ctx.get('gt'))}, got {value!r}"
    if field is not None and field.description:
        return f"'{key}' must be {field.description}, got {value!r}"
    if kind == "literal_error":
        return f"'{key}' must be {ctx['expected']}, got {value!r}"
    what = TYPE_WORDS.get(kind)
    if what is None:
        return f"'{key}': {e['msg']}, got {value!r}"
    if what == "a mapping":
        return f"'{key}' must be a mapping, got {type(value).__name__} {value!r}"
    return f"'{key}' must be {what}, got {value!r}"


def key_path(loc: tuple[str | int, ...]) -> str:
    """``('pairs', 0, 'student')`` -> ``pairs[0].student``; a dict key's own error names its mapping."""
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation (``X | None``, ``list[X]``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = _model_in(arg)
        if model is not None:
            return model
    return None


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel]:
    """The model of the section at ``loc`` (list indices skipped)."""
    model: type[BaseModel] = StudySpec
    for part in loc:
        if isinstance(part, str):
            model = _model_in(model.model_fields[part].annotation) or model
    return model


def _field_at(loc: tuple[str | int, ...]) -> FieldInfo | None:
    """The field whose own value failed; None inside a list or mapping of values (``seeds[1]``, ``config.x``)."""
    model: type[BaseModel] | None = StudySpec
    field = None
    for part in loc:
        if isinstance(part, int):
            field = None
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = _model_in(field.annotation)
    return field
