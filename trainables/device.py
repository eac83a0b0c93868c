"""Which device a trial trains on, and the numeric settings that follow from it."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch


def _ray_gpu_ids() -> list[str] | None:
    """GPU ids Ray assigned to this trial, or None when not running inside a Ray worker."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a requirement, but the loop must not depend on it
        return None
    if not ray.is_initialized():
        return None
    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 - the driver process has no worker context
        return None


def resolve_device(cfg: Mapping[str, Any]) -> torch.device:
    """``device: auto`` takes a GPU only when one is there and (under Ray) assigned to this trial.

    Trials that asked Ray for no GPU stay on the CPU even though recent Ray no longer hides GPUs from
    them. An explicit ``cuda`` on a machine without CUDA falls back to the CPU with a warning.
    """
    wanted = str(cfg.get("device", "auto"))
    if wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if wanted != "auto":
            warnings.warn(f"device '{wanted}' asked for but CUDA is not available: training on the CPU", stacklevel=2)
        return torch.device("cpu")
    if wanted != "auto":
        return torch.device(wanted)
    ray_ids = _ray_gpu_ids()
    if ray_ids is not None:
        if not ray_ids:
            return torch.device("cpu")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned ids, so the first visible device is ours.
        return torch.device("cuda:0" if visible else f"cuda:{ray_ids[0]}")
    return torch.device("cuda")


def autocast_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    """Mixed precision: ``amp: auto`` means bf16 on a GPU and full precision on the CPU."""
    amp = cfg.get("amp", "auto")
    if amp == "off" or device.type != "cuda":
        return None
    return torch.bfloat16


def use_channels_last(cfg: Mapping[str, Any], device: torch.device) -> bool:
    value = cfg.get("channels_last", "auto")
    return device.type == "cuda" if value == "auto" else bool(value)


def cap_gpu_memory(cfg: Mapping[str, Any], device: torch.device) -> None:
    """With fractional GPUs several trials share one card: cap this process's share of its memory."""
    fraction = cfg.get("gpu_memory_fraction")
    if device.type == "cuda" and fraction:
        torch.cuda.set_per_process_memory_fraction(float(fraction), device)
