"""Distillation methods: one module per method, each registering itself on import.

Every module in this package is imported here, so adding a method means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

from ..params import method_meta
from .base import METHODS, Method, MethodContext, StepResult, get_method, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")



def catalogue(names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {label, order, source}}`` of the named (default: all registered) methods, for ``study.json``."""
    return {name: method_meta(get_method(name)) for name in (METHODS if names is None else names)}


__all__ = ["METHODS", "Method", "MethodContext", "StepResult", "catalogue", "get_method", "register_method"]
