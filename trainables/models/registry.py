"""Name -> constructor table, filled by a decorator in each architecture module.

A registry (instead of an if/elif chain) lets each architecture file add itself and keeps the
list of valid names in one place for error messages and test parametrisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

from .base import ZooModel

Builder = Callable[..., ZooModel]
B = TypeVar("B", bound=Builder)

_BUILDERS: dict[str, Builder] = {}
_IMAGENET: set[str] = set()


def register_model(name: str, *, imagenet: bool = False) -> Callable[[B], B]:
    """Register ``fn(num_classes=..., **kwargs) -> ZooModel`` under ``name`` (case-sensitive)."""

    def decorator(fn: B) -> B:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} registered twice")
        _BUILDERS[name] = fn
        if imagenet:
            _IMAGENET.add(name)
        return fn

    return decorator


def list_models() -> list[str]:
    """All registered names, sorted."""
    return sorted(_BUILDERS)


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")


def is_imagenet_model(name: str) -> bool:
    """True for models sized for 224x224 ImageNet inputs (their stems downsample 4x or more)."""
    _check_name(name)
    return name in _IMAGENET


def create(name: str, num_classes: int = 100, **kwargs) -> ZooModel:
    """Build a freshly initialised model; never downloads weights."""
    _check_name(name)
    return _BUILDERS[name](num_classes=num_classes, **kwargs)


@functools.cache
def model_class(name: str) -> type[ZooModel]:
    """The class ``name`` builds, read off a copy built on the meta device (no memory, no real init)."""
    _check_name(name)
    with torch.device("meta"):
        return type(_BUILDERS[name](num_classes=2))


def models_with(flag: str) -> list[str]:
    """Registered names whose class sets the boolean ``flag`` (e.g. ``supports_preact``), sorted: the one
    source for messages that list which models a method can use."""
    return [name for name in list_models() if getattr(model_class(name), flag)]
