"""Optuna define-by-run search spaces, derived from the method declarations (``trainables.params``).

A method's searched keys are the params it declares with ``search=`` (in declaration order), after the
loop's ``lr`` and ``weight_decay``. A knob is suggested only when the method really has that config key,
is not fixed by the spec, and its condition holds (``when``: e.g. IJCKD's ``alpha`` only when the loss
combination has ``sr``). So a space never proposes a key a method would reject.

``MethodSpace`` is what ``OptunaSearch`` receives: a picklable callable (the searcher is pickled into the
experiment checkpoint). It stores plain data only; the declarations are looked up when it is called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainables.params import Choice, Dist, Float, Int, Knob, knobs_of

__all__ = ["Choice", "Dist", "Float", "Int", "Knob", "MethodSpace", "available_knobs", "knobs_for", "parse_dist"]


def knobs_for(method: str) -> dict[str, Knob]:
    """The loop's knobs (``lr``, ``weight_decay``), then the method's declared ones (unknown method: ConfigError)."""
    from trainables.config import LOOP_PARAMS
    from trainables.methods import get_method

    return {**knobs_of(LOOP_PARAMS), **knobs_of(get_method(method).params)}


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
