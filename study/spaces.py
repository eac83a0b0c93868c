"""Optuna define-by-run search spaces, one table of knobs per method, registered by method name.

Each method's knobs live here in one table (``register_space``); a method may instead carry a
``search_space`` class attribute with the same kind of table. A knob is suggested only when the method
really has that config key (checked against the method's ``defaults`` at run time), is not fixed by the
spec, and its condition holds (``when``: e.g. IJCKD's ``alpha`` only when the loss combination has ``sr``).
So a space never proposes a key a method would reject, and a method that is not registered yet is simply
skipped.

``MethodSpace`` is what ``OptunaSearch`` receives: a picklable callable (the searcher is pickled into the
experiment checkpoint). It stores plain data only; the knob tables are looked up when it is called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Float:
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
    choices: tuple

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return f"one of {', '.join(map(str, self.choices))}"


Dist = Union[Float, Int, Choice]  # noqa: UP007 - a runtime alias, must work on Python 3.10


@dataclass(frozen=True)
class Knob:
    """One searchable config key: its distribution and, optionally, when it applies."""

    dist: Dist
    when: Callable[[Mapping[str, Any]], bool] | None = field(default=None, compare=False)
    note: str = ""


COMMON_KNOBS: dict[str, Knob] = {
    "lr": Knob(Float(0.01, 0.2, log=True), note="SGD learning rate (paper default 0.05, 0.01 for Shuffle/MobileNet)"),
    "weight_decay": Knob(Float(1e-4, 1e-3, log=True), note="SGD weight decay (default 5e-4)"),
}
"""Knobs every method has (loop keys)."""

SPACES: dict[str, dict[str, Knob]] = {}


def register_space(method: str, knobs: dict[str, Knob]) -> None:
    """Register the knob table of ``method`` (its own keys; the common ones are added automatically)."""
    SPACES[method] = dict(knobs)


def _has(part: str) -> Callable[[Mapping[str, Any]], bool]:
    def check(values: Mapping[str, Any]) -> bool:
        return part in str(values.get("loss_combination", "")).split("+")

    return check


def _deep_connector(values: Mapping[str, Any]) -> bool:
    """The hidden-width factor only matters for the 3-layer (1x1-3x3-1x1) connector."""
    return int(values.get("connector_depth", 1) or 1) == 3


TEMPERATURE = Knob(Float(1.0, 8.0), note="softmax temperature")
CONNECTOR_DEPTH = Knob(Choice((1, 2, 3)), note="1x1 | 1x1-1x1 | 1x1-3x3-1x1")
CONNECTOR_FACTOR = Knob(Choice((1, 2, 4)), when=_deep_connector, note="hidden width C_t/factor (depth 3)")

register_space("ce", {})
register_space("teacher", {})
register_space(
    "kd",
    {
        "temperature": TEMPERATURE,
        "kd_weight": Knob(Float(0.1, 10.0, log=True)),
        "ce_weight": Knob(Float(0.1, 1.0)),
    },
)
register_space(
    "dkd",
    {
        "dkd_alpha": Knob(Float(0.5, 2.0)),
        "dkd_beta": Knob(Float(1.0, 10.0)),
        "temperature": TEMPERATURE,
    },
)
register_space("fitnet", {"hint_weight": Knob(Float(10.0, 1000.0, log=True))})
register_space(
    "srrl",
    {
        "alpha": Knob(Float(0.1, 10.0, log=True), note="softmax-regression weight"),
        "beta": Knob(Float(0.1, 10.0, log=True), note="feature-matching weight"),
        "connector_depth": CONNECTOR_DEPTH,
        "connector_factor": CONNECTOR_FACTOR,
    },
)
register_space("simkd", {"connector_depth": CONNECTOR_DEPTH, "connector_factor": CONNECTOR_FACTOR})
register_space(
    "ijckd",
    {
        "alpha_ce": Knob(Float(0.0, 1.0), note="CE weight through the teacher head"),
        "loss_combination": Knob(Choice(("sr", "fm", "sr+fm"))),
        "alpha": Knob(Float(0.1, 10.0, log=True), when=_has("sr"), note="sr weight (only with sr)"),
        "beta": Knob(Float(0.1, 10.0, log=True), when=_has("fm"), note="fm weight (only with fm)"),
        "connector_depth": CONNECTOR_DEPTH,
        "connector_factor": CONNECTOR_FACTOR,
    },
)
register_space("teacher_head", {})  # the Table-5 baseline: only lr / weight_decay
register_space(
    "ckd",
    {
        "ckd_group_size": Knob(Choice((2, 3)), note="k: samples per comparison group"),
        "ckd_beta": Knob(Float(0.1, 10.0, log=True)),
        "temperature": TEMPERATURE,
    },
)
register_space("online", {"switch_every": Knob(Int(1, 10)), "temperature": TEMPERATURE})
register_space("offline", {"temperature": TEMPERATURE})


def knobs_for(method: str) -> dict[str, Knob]:
    """Common knobs, then the method's own table (registry first, else a ``search_space`` class attribute)."""
    table = SPACES.get(method)
    if table is None:
        try:
            from trainables.methods import get_method

            table = dict(getattr(get_method(method), "search_space", None) or {})
        except Exception:  # noqa: BLE001 - unknown method: common knobs only
            table = {}
    return {**COMMON_KNOBS, **table}


def available_knobs(method: str, method_keys: set[str] | frozenset[str]) -> dict[str, Knob]:
    """The knobs of ``method`` whose key the method actually has (``method_keys``: its valid config keys)."""
    return {name: knob for name, knob in knobs_for(method).items() if name in method_keys}


@dataclass
class MethodSpace:
    """Define-by-run space for one method in one study: picklable, plain data only.

    ``base`` holds the value every key has without searching (method defaults + fixed config), which
    conditions read; ``fixed`` lists keys the spec fixed (never suggested); ``overrides`` replace knob
    distributions; ``keys`` are the config keys the method accepts.
    """

    method: str
    base: dict[str, Any]
    keys: frozenset[str]
    fixed: frozenset[str] = frozenset()
    overrides: dict[str, Dist] = field(default_factory=dict)

    def active_knobs(self) -> dict[str, Knob]:
        knobs = available_knobs(self.method, self.keys)
        return {name: knob for name, knob in knobs.items() if name not in self.fixed}

    def dist(self, name: str, knob: Knob) -> Dist:
        return self.overrides.get(name, knob.dist)

    def __call__(self, trial: Any) -> None:
        values = dict(self.base)
        for name, knob in self.active_knobs().items():
            if knob.when is not None and not knob.when(values):
                continue
            values[name] = self.dist(name, knob).suggest(trial, name)
        return None

    def default_point(self) -> dict[str, Any]:
        """The paper defaults of the knobs this space would suggest (``points_to_evaluate``).

        Walks the same conditions with default values; a default outside an overridden range is left out
        (Optuna then samples that knob).
        """
        values = dict(self.base)
        point: dict[str, Any] = {}
        for name, knob in self.active_knobs().items():
            if knob.when is not None and not knob.when(values):
                continue
            default = self.base.get(name)
            if default is not None and self.dist(name, knob).contains(default):
                point[name] = default
        return point


def parse_dist(value: Any, base: Dist | None) -> Dist | None:
    """A spec override -> distribution: a list is a choice, ``{low, high[, log, step]}`` a range.

    Returns None for a scalar (the spec treats that as a fixed value). Raises ValueError for bad ranges.
    """
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list of choices")
        return Choice(tuple(value))
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown:
            raise ValueError(f"unknown range field(s) {', '.join(sorted(unknown))} (allowed: low, high, log, step)")
        if "low" not in value or "high" not in value:
            raise ValueError("a range needs both low and high")
        low, high, log = value["low"], value["high"], bool(value.get("log", False))
        for bound in (low, high):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                raise ValueError(f"range bounds must be finite numbers, got {bound!r}")
        if low >= high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ValueError(f"a log range needs low > 0, got {low}")
        as_int = isinstance(base, Int) or ("step" in value and isinstance(value["step"], int))
        if as_int:
            if not (isinstance(low, int) and isinstance(high, int)):
                raise ValueError(f"an integer range needs integer bounds, got {low}, {high}")
            return Int(low, high, int(value.get("step", 1)), log)
        if isinstance(base, Choice):
            raise ValueError(f"this knob is a choice ({base.describe()}): give a list of values")
        return Float(float(low), float(high), log)
    return None
