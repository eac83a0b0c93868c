"""The trial config: one flat dict of keys with defaults, validated before any work starts.

A flat dict (``{"method": "kd", "temperature": 4.0, ...}``) is what Ray Tune's ``param_space`` and
Optuna's suggestions produce and what ``params.json`` stores, so tables can group by any key.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from .data import DATA_KEYS, list_datasets
from .device import validate_device_keys
from .errors import ConfigError, did_you_mean, unknown_choice
from .params import ANY, Float, Param, config_model, defaults_of, parse
from .teacher.stream import STREAM_DEFAULTS, validate_stream_keys

PATH_OR_NONE = "a path or null"
LOOP_PARAMS: tuple[Param, ...] = (
    Param("method", str, "ce", doc="the method to train (see Methods)"),
    Param("seed", ANY, 0, doc="seed of initialisation, batch order and augmentation"),
    Param("student", ANY, "resnet8", doc="student architecture (or the one model of ce/teacher)"),
    Param("teacher", ANY, None, doc="teacher architecture"),
    Param("teacher_checkpoint", ANY, None, doc="the trained teacher's file"),
    Param("teacher_budget", ANY, None, doc="at most this many teacher calls (kd, ckd); needs train_subset"),
    Param("teacher_cache_view", str, "augmented", choices=("augmented", "clean"),
          doc="which view of each image the budgeted teacher labels: one seeded crop+flip (CKD's code) or clean"),
    Param("epochs", int, 240, gt=0, doc="training epochs"),
    Param("batch_size", int, 64, gt=0, doc="training batch size"),
    Param("lr", float, None, gt=0, search=Float(0.01, 0.2, log=True),
          doc="SGD learning rate (paper default 0.05, 0.01 for Shuffle/MobileNet)"),
    Param("momentum", float, 0.9, ge=0, doc="SGD momentum"),
    Param("nesterov", bool, True, doc="Nesterov momentum"),
    Param("weight_decay", float, 5e-4, ge=0, search=Float(1e-4, 1e-3, log=True),
          doc="SGD weight decay (default 5e-4)"),
    Param("lr_milestones", ANY, None, doc="epochs at which the LR decays (default: 150/180/210 of 240, scaled)"),
    Param("lr_decay", float, 0.1, gt=0, doc="LR factor at each milestone"),
    Param("augment", bool, True, doc="random crop + flip on the training split"),
    Param("eval_batch_size", int, 256, gt=0, doc="batch size of evaluation"),
    Param("eval_test_every", ANY, 0, doc="also evaluate the test split every N epochs (0: only at the end)"),
    Param("checkpoint_every", ANY, 1, doc="checkpoint every N epochs"),
    Param("device", ANY, "auto", doc="auto, cpu, cuda, cuda:<index>"),
    Param("amp", str, "auto", choices=("auto", "bf16", "off"), doc="mixed precision"),
    Param("channels_last", ANY, "auto", choices=("auto", True, False), doc="channels-last memory format"),
    Param("compile", ANY, False, doc="torch.compile the model"),
    Param("gpu_memory_fraction", ANY, None, doc="cap on the GPU memory one trial may take"),
    Param("teacher_store", bool, False, doc="serve teacher outputs from a shared per-example store"),
    Param("teacher_store_dir", ANY, None, doc="where the shared store lives"),
    Param("teacher_stream", ANY, STREAM_DEFAULTS["teacher_stream"],
          doc="share the teacher's logits of each augmented epoch across trials: auto, true, false"),
    Param("teacher_stream_dir", ANY, STREAM_DEFAULTS["teacher_stream_dir"],
          doc="folder the trials of a study share the stream in (studies set it)"),
    Param("teacher_stream_dtype", ANY, STREAM_DEFAULTS["teacher_stream_dtype"],
          doc="precision of the stored logits: float32 or bfloat16"),
    Param("teacher_stream_max_gb", ANY, STREAM_DEFAULTS["teacher_stream_max_gb"],
          doc="disk budget of the stream; the oldest epochs are evicted beyond it"),
    Param("bound_metrics", bool, True, doc="log the IJCKD error-bound diagnostics"),
)
"""The shared loop's keys (see README "Config keys"); data keys live in ``trainables.data.DATA_KEYS``.
``lr`` and ``weight_decay`` are searched for every method."""

LOOP_DEFAULTS: dict[str, Any] = defaults_of(LOOP_PARAMS)

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


@cache
def loop_model() -> Any:
    """The pydantic model of the keys every method has: the loop's, and the data keys (checked by the data)."""
    data = tuple(Param(k, ANY, v) for k, v in DATA_KEYS.items())
    return config_model("LoopConfig", LOOP_PARAMS + data)


@cache
def method_model(method: type) -> Any:
    """The trial-config model of one method: the loop's model plus the method's declared params."""
    return config_model(f"{method.__name__}Config", method.params, base=loop_model())


def declared_params(method: type) -> dict[str, Param]:
    return {p.name: p for p in (*LOOP_PARAMS, *method.params)}


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults (loop, data, method), parse the values with the method's declared types, check the rest.

    Parsed once here: a key declared ``float`` is a float afterwards, an ``int`` an int. Raises
    ``ConfigError`` with one line naming the key, the value and what is allowed.
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
    out.update(parse(method_model(method), out, declared_params(method)))
    _check_numbers(out)
    if out["lr"] is None:
        out["lr"] = default_lr(out[method.model_key])
    if out["lr_milestones"] is None:
        out["lr_milestones"] = scaled_milestones(out["epochs"])
    validate_device_keys(out)
    _validate_teacher_store(out, method)
    validate_stream_keys(out)
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
    if not out["teacher_store"]:
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
