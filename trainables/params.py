"""Method declarations: the config keys a method accepts, their types, defaults, allowed values and search space.

A method's file states each of its keys once, as a ``Param``; everything else is derived from those
declarations: the trial-config model that validates a config (``trainables.config``), the Optuna
define-by-run space (``study.spaces``), the labels and row order analysis uses (written into ``study.json``)
and the README's method tables (``python -m trainables docs``). This module imports neither torch nor Optuna:
a search distribution only calls ``trial.suggest_*`` on whatever trial it is given.

Example (a method file)::

    @register_method
    class KD(Method):
        name, label, order, source = "kd", "KD", 30, "Hinton et al. 2015"
        params = (
            Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0), doc="softmax temperature"),
            Param("kd_weight", float, 1.0, ge=0, search=Float(0.1, 10.0, log=True)),
        )

A method with no knob of its own to search says so with ``search_space = FIXED`` (a search then tunes only
the loop's ``lr`` and ``weight_decay``); a method that declares neither is refused at registration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union


# -- search distributions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Float:
    """A float range, uniform or log-uniform."""

    low: float
    high: float
    log: bool = False

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"float in [{self.low}, {self.high}]{' (log)' if self.log else ''}"


@dataclass(frozen=True)
class Int:
    """An integer range (step, optionally log-uniform)."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: Any, name: str) -> int:
        # Optuna 5: step must be a keyword.
        return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step), log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"integer in [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of values."""

    choices: tuple

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return f"one of {', '.join(map(str, self.choices))}"


Dist = Union[Float, Int, Choice]  # noqa: UP007 - a runtime alias, must work on Python 3.10


class _Fixed:
    """``search_space = FIXED``: the method has no knob of its own to search (only ``lr``/``weight_decay``)."""

    def __repr__(self) -> str:
        return "FIXED"

    def __reduce__(self) -> str:
        return "FIXED"


FIXED = _Fixed()


# -- conditions: a knob that exists only with certain values of another key ------------------------------------
@dataclass(frozen=True)
class Includes:
    """True when ``key``'s value, split on ``sep``, includes ``part`` (``loss_combination: sr+fm`` has ``sr``)."""

    key: str
    part: str
    sep: str = "+"

    def __call__(self, values: Mapping[str, Any]) -> bool:
        return self.part in str(values.get(self.key, "")).split(self.sep)

    def describe(self) -> str:
        return f"only when {self.key} includes {self.part}"


@dataclass(frozen=True)
class Equals:
    """True when ``key`` has ``value``."""

    key: str
    value: Any

    def __call__(self, values: Mapping[str, Any]) -> bool:
        return values.get(self.key) == self.value

    def describe(self) -> str:
        return f"only when {self.key} = {self.value}"


Condition = Callable[[Mapping[str, Any]], bool]


def describe_condition(when: Condition | None) -> str:
    if when is None:
        return ""
    describe = getattr(when, "describe", None)
    return describe() if callable(describe) else "only under a condition on other keys"


# -- one declared key -------------------------------------------------------------------------------------------
ANY = object()
"""``Param(type=ANY)``: a key whose value another check owns (a path, a device string)."""


@dataclass(frozen=True)
class Param:
    """One config key: its type, default, allowed values, what it does, and how a search varies it.

    ``type`` is ``float``, ``int``, ``bool``, ``str`` or ``ANY``; ``choices`` restricts it to a list; ``ge``/
    ``gt``/``le`` bound a number; ``nullable`` admits ``None`` (implied by a ``None`` default); ``allowed`` is
    the text an error shows when the type is unusual (e.g. "'middle' or an integer" with ``type=(str, int)``).
    ``search`` is the distribution a search draws from (None: not searched); ``when`` the condition under
    which the key matters and is searched.
    """

    name: str
    type: Any = float
    default: Any = None
    doc: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    allowed: str = ""
    when: Condition | None = field(default=None, compare=False)
    search: Dist | None = None
    aliases: tuple[tuple[Any, Any], ...] = ()
    """Earlier names of allowed values, still accepted and read as the current one: ``(("old", "new"),)``."""

    def __post_init__(self) -> None:
        if self.default is None and not self.nullable:
            object.__setattr__(self, "nullable", True)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))

    def replace(self, **changes: Any) -> Param:
        """A copy with some fields changed (a method that shares a key with another default)."""
        return dataclasses.replace(self, **changes)

    # -- what is allowed, in words -------------------------------------------------------------------------
    def bounds(self) -> str:
        parts = [f"{op} {_num(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le)) if v is not None]
        return " and ".join(parts)

    def allowed_text(self) -> str:
        """What the key admits, as an error message or a README cell says it."""
        if self.allowed:
            text = self.allowed
        elif self.choices is not None:
            text = f"one of {', '.join(map(str, self.choices))}"
        elif self.type is bool:
            text = "true or false"
        elif self.type is int:
            text = "a positive integer" if self.gt == 0 and self.ge is None else f"an integer {self.bounds()}".strip()
        elif self.type is float:
            text = f"a number {self.bounds()}".strip()
        elif self.type is str:
            text = "a string"
        else:
            text = "any value"
        return f"{text} or null" if self.nullable and self.type is not ANY else text

    def error(self, value: Any) -> str:
        """The one-line message for a value this key does not admit."""
        if self.choices is not None and not self.allowed:
            from .errors import did_you_mean

            hint = did_you_mean(str(value), [str(c) for c in self.choices])
            return f"{self.name} must be {self.allowed_text()}; got '{value}'{hint}"
        if self.type is bool and not self.allowed:
            return f"{self.name} must be true or false; got '{value}'"
        if self.type is float and _is_number(value) and self.bounds():
            return f"{self.name} must be {self.bounds()}, got {value}"
        return f"{self.name} must be {self.allowed_text()}, got {value!r}"

    def search_text(self) -> str:
        return self.search.describe() if self.search is not None else ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- a method's declaration as a whole ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One searchable key as a search sees it: its distribution, when it applies, and a note for the docs."""

    dist: Dist
    when: Condition | None = field(default=None, compare=False)
    note: str = ""


def knobs_of(params: Iterable[Param]) -> dict[str, Knob]:
    """The searched keys of a declaration, in declaration order (the order a define-by-run space asks them)."""
    return {p.name: Knob(p.search, p.when, p.doc) for p in params if p.search is not None}


def defaults_of(params: Iterable[Param]) -> dict[str, Any]:
    return {p.name: p.default for p in params}


class DeclarationError(TypeError):
    """A method class whose declaration is incomplete or inconsistent (raised at registration)."""


def check_declaration(cls: Any) -> None:
    """Refuse a method class without a name, label, declared space, or with a search outside its own range."""
    name = getattr(cls, "name", "")
    where = f"method class {cls.__qualname__}"
    if not name:
        raise DeclarationError(f"{where} needs a non-empty class attribute 'name'")
    if not getattr(cls, "label", ""):
        raise DeclarationError(f"{where} ('{name}') needs a 'label' (its name in papers and reports, e.g. 'KD')")
    params = tuple(getattr(cls, "params", ()))
    names = [p.name for p in params]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise DeclarationError(f"{where} ('{name}') declares {', '.join(doubled)} twice")
    space = getattr(cls, "search_space", None)
    searched = [p for p in params if p.search is not None]
    if space is FIXED and searched:
        raise DeclarationError(
            f"{where} ('{name}') says search_space = FIXED but searches {', '.join(p.name for p in searched)}"
        )
    if space is not FIXED and not searched:
        raise DeclarationError(
            f"{where} ('{name}') declares no search space: give some params a search= distribution, or set "
            "search_space = FIXED to search only lr and weight_decay"
        )
    for p in searched:
        _check_search_fits(where, p)


def _check_search_fits(where: str, p: Param) -> None:
    """A searched distribution must only propose values the key admits."""
    if isinstance(p.search, Choice):
        probes = p.search.choices
    else:
        probes = (p.search.low, p.search.high)
    for value in probes:
        if p.choices is not None and value not in p.choices:
            raise DeclarationError(f"{where}: search of '{p.name}' proposes {value!r}, not one of {p.choices}")
        if _is_number(value) and not _within(p, value):
            raise DeclarationError(f"{where}: search of '{p.name}' proposes {value!r}, outside {p.bounds()}")


def _within(p: Param, value: float) -> bool:
    return not ((p.ge is not None and value < p.ge) or (p.gt is not None and value <= p.gt)
                or (p.le is not None and value > p.le))


def method_meta(cls: Any) -> dict[str, Any]:
    """What analysis needs to know about a method without importing it: label, row order, source."""
    return {"label": cls.label, "order": cls.order, "source": getattr(cls, "source", "")}


# -- the typed trial-config model ---------------------------------------------------------------------------------
def _integral(value: Any) -> Any:
    """YAML and JSON give ``2.0`` for some integers; accept an integral float where an integer is declared."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _numeric_text(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``5e-4`` (no dot) as a string: accept a string that is a number, as
    ``float()`` would, so ``weight_decay: 5e-4`` in a spec means what its author meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def annotation(p: Param) -> Any:
    """The pydantic type of a declared key (strict: no string-to-number or bool-to-number coercion)."""
    from typing import Annotated, Literal, Optional

    from pydantic import BeforeValidator, Field

    bounds = Field(ge=p.ge, gt=p.gt, le=p.le)
    if p.choices is not None:
        kind: Any = Literal[p.choices]  # type: ignore[valid-type]
    elif p.type is ANY:
        return Any
    elif p.type is int:
        kind = Annotated[int, BeforeValidator(_integral), bounds]
    elif p.type is float:
        kind = Annotated[float, BeforeValidator(_numeric_text), bounds]
    elif isinstance(p.type, tuple):
        kind = Union[p.type]  # noqa: UP007 - built at run time
    else:
        kind = p.type
    if p.aliases:
        renamed = dict(p.aliases)
        kind = Annotated[kind, BeforeValidator(lambda v: renamed.get(v, v) if isinstance(v, Hashable) else v)]
    return Optional[kind] if p.nullable else kind  # noqa: UP045 - built at run time


def config_model(name: str, params: Iterable[Param], base: Any = None) -> Any:
    """A pydantic model with one field per declared key (``base``: the model of the keys every method has)."""
    from pydantic import ConfigDict, create_model

    fields = {p.name: (annotation(p), p.default) for p in params}
    if base is None:
        return create_model(name, __config__=ConfigDict(strict=True, extra="ignore"), **fields)
    return create_model(name, __base__=base, **fields)


def parse(model: Any, values: Mapping[str, Any], params: Mapping[str, Param]) -> dict[str, Any]:
    """Validate ``values`` with ``model``; the first error becomes one ``ConfigError`` line naming the key."""
    from pydantic import ValidationError

    from .errors import ConfigError

    try:
        return model.model_validate(dict(values)).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if key in params:
            raise ConfigError(params[key].error(values.get(key))) from None
        raise ConfigError(f"{key or 'config'}: {first['msg']}, got {first.get('input')!r}") from None
