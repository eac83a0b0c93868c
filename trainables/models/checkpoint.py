"""Loading RepDistiller/mdistiller style checkpoints into zoo models.

Released teachers are ``{'model': state_dict, ...}`` files, sometimes saved from a DataParallel
wrapper (``module.`` prefix) and sometimes by PyTorch versions that did not store BatchNorm's
``num_batches_tracked``. Mismatches are reported all at once, by key name, so a wrong architecture
name is obvious instead of surfacing as a long torch traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

_STATE_KEYS = ("model", "state_dict")
_PREFIX = "module."


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not fit the model."""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def split_checkpoint(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate the state dict from the metadata stored next to it."""
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return dict(obj[key]), {k: v for k, v in obj.items() if k != key}
        if _is_state_dict(obj):
            return dict(obj), {}
    raise ValueError("checkpoint holds neither a state dict nor a dict with a 'model' or 'state_dict' "
                     f"entry (top-level keys: {sorted(obj) if isinstance(obj, Mapping) else type(obj)})")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = _PREFIX) -> dict[str, torch.Tensor]:
    """Drop a DataParallel ``module.`` prefix when every key carries it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _fill_bn_counters(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old checkpoints lack ``num_batches_tracked``; it is unused in eval, so take the model's."""
    state = dict(state)
    for key, buf in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = buf.clone()
    return state


def describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool) -> str | None:
    """One message naming missing/unexpected keys and shape clashes, or None when it fits."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(own)) if strict else []
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_first(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {_first(shapes, sep='; ')}")
    return "; ".join(parts) or None


def _first(names: list[str], limit: int = 12, sep: str = ", ") -> str:
    """The first ``limit`` names, so a wrong architecture gives one readable line, not hundreds of keys."""
    shown = sep.join(names[:limit])
    return shown if len(names) <= limit else f"{shown}{sep}... ({len(names) - limit} more)"


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` a file (CPU, ``weights_only``); an unreadable file is a ``ValueError`` naming it.

    ``mmap`` maps tensor data instead of reading it (zip-format files only): enough to check keys and
    shapes of many files cheaply. A truncated or foreign file gives one line, not torch's traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save's zip format, even when cut before its directory
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise ValueError(f"{path} holds objects other than tensors and plain containers ({found.group(1)}), "
                             "which weights_only loading refuses; re-save just the state dict") from err
        raise ValueError(f"{path} is not a torch checkpoint ({path.stat().st_size} bytes that torch.load "
                         "cannot read as a saved state dict)") from err
    except Exception as err:  # a foreign or damaged file can fail inside torch.load in many ways
        what = "is a truncated or damaged torch checkpoint" if is_zip else "is not a torch checkpoint"
        raise ValueError(f"{path} {what} ({path.stat().st_size} bytes that torch.load cannot read: "
                         f"{_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    """torch's message up to its first sentence (its hints run on for lines)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0][:200]


def fitting_state(model: nn.Module, obj: Any, path: str | os.PathLike, strict: bool = True
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in a loaded checkpoint ``obj``, checked against ``model``'s keys and shapes.

    Raises ``CheckpointMismatchError`` naming the file and every mismatch; loads nothing into the model.
    """
    state, meta = split_checkpoint(obj)
    state = _fill_bn_counters(model, strip_prefix(state))
    problem = describe_mismatch(model, state, strict)
    if problem:
        raise CheckpointMismatchError(f"checkpoint {path} does not fit {type(model).__name__}: {problem}")
    return state, meta


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` (CPU, ``weights_only``); return the file's metadata."""
    state, meta = fitting_state(model, read_checkpoint(path), path, strict)
    model.load_state_dict(state, strict=strict)
    return meta
