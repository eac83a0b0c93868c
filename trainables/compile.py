"""``torch.compile`` of a training step, with the methods marked ``@eager`` kept out of its graphs.

``torch.compiler.disable`` imports TorchDynamo, about 0.8 s of every trial actor's start (a third of its
imports) even though compile is off by default. ``@eager`` only records the method; ``compile_step``
applies ``torch.compiler.disable`` to every recorded one the first time a step is compiled, so trials
that do not compile never import Dynamo, and those that do see the same graphs as with the decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_EAGER: list[tuple[type, str]] = []  # (class, method name) of every @eager method, in definition order


class eager:
    """Marks a method to run outside ``torch.compile`` graphs (a counter, a host-side lookup)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __set_name__(self, owner: type, name: str) -> None:
        _EAGER.append((owner, name))
        setattr(owner, name, self.fn)  # the plain function: no descriptor left behind


def exclude_eager_methods() -> None:
    """Wrap every ``@eager`` method in ``torch.compiler.disable`` (once; later calls change nothing)."""
    for owner, name in _EAGER:
        fn = owner.__dict__[name]
        if not getattr(fn, "_kd_eager_wrapped", False):
            wrapped = torch.compiler.disable(fn)
            wrapped._kd_eager_wrapped = True
            setattr(owner, name, wrapped)


def compile_step(step: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``torch.compile(step, **options)`` after keeping the ``@eager`` methods out of its graphs."""
    exclude_eager_methods()
    return torch.compile(step, **options)
