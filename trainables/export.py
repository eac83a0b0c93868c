"""The deployable model of a trial: saved as weights plus a plain description, read by ``load_exported``.

``export/model.pt`` holds ``{"format", "version", "module", "state_dict"}``: ``module`` is a small dict of
strings, numbers and lists saying how to build the network (architectures, class count, connector depth,
factor and channels, the head's size), ``state_dict`` its tensors. So it loads with
``torch.load(weights_only=True)``: using a result never means unpickling code from a file.

Two kinds of module:

* ``deployed``: student trunk -> (connector) -> a copy of the teacher's pooling + classifier, no teacher
  trunk (SimKD, IJCKD, teacher_head);
* ``student``: the student network itself (SRRL predicts with its own head).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .connectors import Connector

EXPORT_FORMAT = "kdstudy.export"
EXPORT_VERSION = 1


class TeacherHead(nn.Module):
    """A copy of the teacher's head: global average pool, flatten, its linear classifier (frozen)."""

    def __init__(self, classifier: nn.Linear) -> None:
        super().__init__()
        self.classifier = copy.deepcopy(classifier)
        for p in self.classifier.parameters():
            p.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


class DeployedModel(nn.Module):
    """Standalone predictor: student trunk -> (connector) -> teacher's pooling + classifier; no teacher trunk.

    ``forward(x)`` gives the logits the method's ``predict`` gave at evaluation.
    """

    def __init__(self, trunk: nn.Module, connector: nn.Module | None, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.connector = connector if connector is not None else nn.Identity()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.connector(self.trunk.forward_features(x)))


def without_classifier(model: nn.Module) -> nn.Module:
    """A copy of a zoo model whose own (unused) classifier is replaced by ``Identity``."""
    trunk = copy.deepcopy(model)
    path = getattr(trunk, "classifier_path", None)
    if path:
        parent_name, _, attr = path.rpartition(".")
        parent = trunk.get_submodule(parent_name) if parent_name else trunk
        setattr(parent, attr, nn.Identity())
    return trunk


def describe_connector(connector: Connector | None) -> dict[str, Any] | None:
    if connector is None:
        return None
    size = list(connector.input_size) if connector.input_size is not None else None
    return {"in_channels": connector.in_channels, "out_channels": connector.out_channels,
            "depth": connector.depth, "factor": connector.factor, "input_size": size}


def build_module(module: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network from an export's ``module`` description (weights not loaded)."""
    from . import models

    kind = module.get("kind")
    if kind == "student":
        return models.create(module["arch"], num_classes=int(module["num_classes"]))
    if kind == "deployed":
        trunk = without_classifier(models.create(module["student"], num_classes=int(module["num_classes"])))
        c = module["connector"]
        connector = None if c is None else Connector(
            c["in_channels"], c["out_channels"], c["depth"], c["factor"],
            tuple(c["input_size"]) if c["input_size"] is not None else None,
        )
        head = TeacherHead(nn.Linear(int(module["head"]["in_features"]), int(module["head"]["out_features"])))
        return DeployedModel(trunk, connector, head)
    raise ValueError(f"unknown exported module kind {kind!r}; this version reads 'student' and 'deployed'")


MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last}
"""The weight layouts an export may record (by name: the file holds no torch objects besides tensors)."""


def frozen(model: nn.Module, memory_format: str = "contiguous_format") -> nn.Module:
    """``model`` on the CPU in ``memory_format``, in eval mode, without gradients: the deployable form."""
    model = model.to("cpu", memory_format=MEMORY_FORMATS[memory_format]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_exported(model: nn.Module, module: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``model``'s weights and its ``module`` description to ``path`` (atomically: tmp, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "module": dict(module), "state_dict": state},
               tmp)
    tmp.replace(path)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The exported model at ``path`` as a ready ``nn.Module`` (CPU, eval mode, no gradients).

    Reads with ``weights_only=True`` only, builds the network from the file's description and loads its
    weights with ``strict=True``. Needs the ``trainables`` package (the architectures), nothing else. The
    weights take the layout evaluation used (``memory_format``: channels_last where the trial ran so), so on
    the CPU the logits equal evaluation's bit for bit.
    """
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a kdstudy export (no '{EXPORT_FORMAT}' format tag)")
    if obj.get("version") != EXPORT_VERSION:
        raise ValueError(f"{path} is export version {obj.get('version')!r}; this version reads {EXPORT_VERSION}")
    model = build_module(obj["module"])
    model.load_state_dict(obj["state_dict"], strict=True)
    return frozen(model, obj["module"].get("memory_format", "contiguous_format"))
