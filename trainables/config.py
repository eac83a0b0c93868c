"""The trial config: one flat dict of keys with defaults, validated before any work starts.

A flat dict (``{"method": "kd", "temperature": 4.0, ...}``) is what Ray Tune's ``param_space`` and
Optuna's suggestions produce and what ``params.json`` stores, so tables can group by any key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .data import DATA_KEYS, list_datasets
from .device import validate_device_keys
from .errors import ConfigError, did_you_mean, unknown_choice

LOOP_DEFAULTS: dict[str, Any] = {
    "method": "ce",
    "seed": 0,
    "student": "resnet8",
    "teacher": None,
    "teacher_checkpoint": None,
    "teacher_budget": None,
    "teacher_cache_view": "clean",
    "epochs": 240,
    "batch_size": 64,
    "lr": None,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "lr_milestones": None,
    "lr_decay": 0.1,
    "augment": True,
    "eval_batch_size": 256,
    "eval_test_every": 0,
    "checkpoint_every": 1,
    "device": "auto",
    "amp": "auto",
    "channels_last": "auto",
    "compile": False,
    "gpu_memory_fraction": None,
    "teacher_store": False,
    "teacher_store_dir": None,
    "bound_metrics": True,
}
"""Keys of the shared loop (see README "Config keys"); data keys live in ``trainables.data.DATA_KEYS``."""

SMALL_LR_ARCHS = frozenset({"ShuffleV1", "ShuffleV2", "MobileNetV2", "mobilenetv1"})
"""Students the CIFAR recipe trains with lr 0.01 instead of 0.05 (RepDistiller/mdistiller recipe)."""

PAPER_MILESTONES = (150, 180, 210)
PAPER_EPOCHS = 240


def default_lr(student: str) -> float:
    return 0.01 if student in SMALL_LR_ARCHS else 0.05


def scaled_milestones(epochs: int) -> list[int]:
    """The paper's 150/180/210-of-240 decay points scaled to ``epochs`` (kept distinct and >= 1)."""
    out: list[int] = []
    for m in PAPER_MILESTONES:
        step = max(1, round(m * epochs / PAPER_EPOCHS))
        if step < epochs and step not in out:
            out.append(step)
    return out


def allowed_keys(method_defaults: Mapping[str, Any]) -> set[str]:
    return set(LOOP_DEFAULTS) | set(DATA_KEYS) | set(method_defaults)


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults (loop, data, method) and check every key and the values the loop relies on.

    Raises ``ConfigError`` with one line naming the key, the value and what is allowed.
    """
    from . import models
    from .methods import get_method

    method_name = cfg.get("method", LOOP_DEFAULTS["method"])
    method = get_method(method_name)
    known = allowed_keys(method.defaults)
    for key in cfg:
        if key not in known:
            raise ConfigError(
                f"unknown config key '{key}' for method '{method_name}'{did_you_mean(key, known)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
    out: dict[str, Any] = {**LOOP_DEFAULTS, **DATA_KEYS, **method.defaults, **cfg}
    if out["dataset"] not in list_datasets():
        raise unknown_choice("dataset", out["dataset"], list_datasets())
    arch_keys = [method.model_key] + (["teacher"] if method.needs_teacher else [])
    for key in dict.fromkeys(arch_keys):
        arch = out.get(key)
        if arch is None:
            choices = ", ".join(models.list_models())
            raise ConfigError(f"method '{method_name}' needs '{key}' (an architecture: {choices})")
        if arch not in models.list_models():
            raise unknown_choice(f"{key} architecture", arch, models.list_models())
    if method.needs_teacher and not out.get("teacher_checkpoint"):
        raise ConfigError(f"method '{method_name}' needs teacher_checkpoint (a file with the trained teacher)")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {out[key]!r}")
    _check_numbers(out)
    if out["lr"] is None:
        out["lr"] = default_lr(out[method.model_key])
    if out["lr_milestones"] is None:
        out["lr_milestones"] = scaled_milestones(out["epochs"])
    if float(out["lr"]) <= 0:
        raise ConfigError(f"lr must be > 0, got {out['lr']}")
    if float(out["weight_decay"]) < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {out['weight_decay']}")
    for key, allowed in (
        ("amp", ("auto", "bf16", "off")),
        ("channels_last", ("auto", True, False)),
        ("teacher_cache_view", ("clean", "augmented")),
        ("bound_metrics", (True, False)),
    ):
        if out[key] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got '{out[key]}'")
    validate_device_keys(out)
    _validate_teacher_store(out, method)
    method.validate_config(out)
    return out


def _check_numbers(out: Mapping[str, Any]) -> None:
    """Types of the numeric loop and data keys (a value of another type would crash later, not as one line)."""
    for key in ("lr", "weight_decay", "val_fraction"):
        value = out[key]
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            continue
        try:
            float(value)  # YAML reads 5e-4 as a string; float() takes it, as the loop does
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    for key, low in (("split_seed", 0), ("num_workers", 0), ("synthetic_size", 1), ("synthetic_classes", 1),
                     ("synthetic_image_size", 1), ("train_subset", 1)):
        value = out[key]
        if value is None and key == "train_subset":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")


def _validate_teacher_store(out: Mapping[str, Any], method: Any) -> None:
    """``teacher_store`` serves teacher outputs by example index, which is only right without augmentation."""
    value = out["teacher_store"]
    if not isinstance(value, bool):
        raise ConfigError(f"teacher_store must be true or false; got '{value}'")
    if not value:
        return
    if not getattr(method, "uses_teacher_store", False):
        users = sorted(name for name, cls in _methods().items() if getattr(cls, "uses_teacher_store", False))
        raise ConfigError(
            f"teacher_store: true is not supported by method '{method.name}'; methods that use it: {', '.join(users)}"
        )
    if out["augment"]:
        raise ConfigError(
            "teacher_store: true needs augment: false (stored teacher outputs are per image, not per augmentation)"
        )
    if out.get("teacher_budget") is not None:
        raise ConfigError(
            "teacher_store: true does not combine with teacher_budget (the budget already caches the teacher's "
            "logits, see teacher_cache_view); drop one of them"
        )


def _methods() -> dict[str, Any]:
    from .methods import METHODS

    return METHODS
