"""Distillation methods: one module per method, each registering itself on import.

Every module in this package is imported here, so adding a method means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import METHODS, Method, MethodContext, StepResult, get_method, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "MethodContext", "StepResult", "get_method", "register_method"]
