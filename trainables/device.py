"""Which device a trial trains on, and the numeric settings that follow from it.

The device comes from Ray's assignment when the trial runs inside a Ray worker (``ray.get_gpu_ids()``),
so a trial that asked Ray for no GPU stays on the CPU even though recent Ray no longer hides GPUs from
it. Outside Ray, ``device: auto`` takes the GPU when there is one. Asking for a GPU on a machine without
one never blocks: ``fit_gpu_request`` (for the study's Ray resource request) and ``resolve_device`` (for
the trial itself) fall back to the CPU with a ``GpuFallbackWarning``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MEMORY_HEADROOM = 0.95
"""A fractional-GPU trial caps its allocator at ``share * 0.95``: the rest is left for the CUDA contexts
of the trials sharing the card, which the per-process cap does not count."""


class GpuFallbackWarning(UserWarning):
    """A GPU was asked for where none is available; the work runs on the CPU instead."""


def validate_device_keys(cfg: Mapping[str, Any]) -> None:
    """Check ``device``, ``compile`` and ``gpu_memory_fraction`` (``amp``/``channels_last`` are checked in config)."""
    device = str(cfg.get("device", "auto"))
    if not DEVICE_PATTERN.match(device):
        raise ConfigError(f"device must be one of auto, cpu, cuda, cuda:<index>; got '{device}'")
    if not isinstance(cfg.get("compile", False), bool):
        raise ConfigError(f"compile must be true or false; got '{cfg.get('compile')}'")
    fraction = cfg.get("gpu_memory_fraction")
    if fraction is not None:
        try:
            ok = 0.0 < float(fraction) <= 1.0
        except (TypeError, ValueError):
            ok = False
        if not ok or isinstance(fraction, bool):
            raise ConfigError(
                f"gpu_memory_fraction must be a number in (0, 1] or null (derived from the trial's GPU share); "
                f"got '{fraction}'"
            )


# -- Ray's view -------------------------------------------------------------------------------------------
def in_ray_worker() -> bool:
    """True inside a Ray task or actor (a Tune trial), False in a driver or a plain process."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a requirement, but the loop must not depend on it
        return False
    if not ray.is_initialized():
        return False
    try:
        # Process-wide mode: unlike task ids it is also right in the thread Tune runs a function trainable in.
        return ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001 - an unexpected Ray internals change must not stop a trial
        return False


def ray_gpu_ids() -> list[str] | None:
    """GPU ids Ray assigned to this worker, or None when not running inside a Ray worker."""
    if not in_ray_worker():
        return None
    import ray

    return [str(g) for g in ray.get_gpu_ids()]


def ray_gpu_share() -> float | None:
    """The share of a GPU Ray assigned to this worker (0.25 for ``gpu: 0.25``), or None outside Ray."""
    if not in_ray_worker():
        return None
    import ray

    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:  # noqa: BLE001
        return None


def gpus_available() -> float:
    """GPUs that trials can be given: the Ray cluster's GPUs when Ray runs, else this machine's CUDA devices."""
    try:
        import ray

        if ray.is_initialized():
            return float(ray.cluster_resources().get("GPU", 0.0))
    except ImportError:  # pragma: no cover
        pass
    return float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0


def fit_gpu_request(requested: float, available: float | None = None) -> float:
    """The GPU share per trial to ask Ray for, so that a request never waits forever.

    ``available`` defaults to ``gpus_available()``. No GPU at all: 0 (the trials run on the CPU) with a
    ``GpuFallbackWarning``. More per trial than the cluster has: capped at what it has, with a warning.
    """
    requested = float(requested or 0.0)
    if requested < 0:
        raise ConfigError(f"gpu per trial must be >= 0, got {requested}")
    if requested == 0:
        return 0.0
    have = gpus_available() if available is None else float(available)
    if have <= 0:
        warnings.warn(
            f"{requested:g} GPU per trial asked for, but no GPU is available here: trials run on the CPU",
            GpuFallbackWarning,
            stacklevel=2,
        )
        return 0.0
    if requested > have:
        warnings.warn(
            f"{requested:g} GPU per trial asked for, but only {have:g} available: each trial gets {have:g}",
            GpuFallbackWarning,
            stacklevel=2,
        )
        return have
    return requested


# -- the trial's device and numerics ----------------------------------------------------------------------
def resolve_device(cfg: Mapping[str, Any]) -> torch.device:
    """``device: auto`` takes a GPU only when one is there and (under Ray) assigned to this trial.

    An explicit ``cuda`` on a machine without CUDA falls back to the CPU with a ``GpuFallbackWarning``.
    """
    wanted = str(cfg.get("device", "auto"))
    if wanted == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if wanted != "auto":
            warnings.warn(
                f"device '{wanted}' asked for but CUDA is not available: training on the CPU",
                GpuFallbackWarning,
                stacklevel=2,
            )
        return torch.device("cpu")
    if wanted != "auto":
        return torch.device(wanted)
    ids = ray_gpu_ids()
    if ids is None:
        return torch.device("cuda", torch.cuda.current_device())
    if not ids:
        return torch.device("cpu")
    return torch.device("cuda", visible_index(ids[0], os.environ.get("CUDA_VISIBLE_DEVICES")))


def visible_index(gpu_id: str, visible: str | None) -> int:
    """Index of Ray's GPU id among the visible devices (Ray sets CUDA_VISIBLE_DEVICES to the assigned ids)."""
    if not visible:
        return int(gpu_id) if str(gpu_id).isdigit() else 0
    names = [v.strip() for v in visible.split(",")]
    return names.index(str(gpu_id)) if str(gpu_id) in names else 0


def autocast_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    """Mixed precision: ``amp: auto`` is bf16 on a GPU that supports it and full precision on the CPU.

    ``amp: bf16`` asks for bf16 autocast on any device, the CPU included (slow on CPUs without native
    bf16, but it trains: useful to check the bf16 path without a GPU). ``amp: off`` is fp32 everywhere.
    """
    amp = cfg.get("amp", "auto")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return None


def use_channels_last(cfg: Mapping[str, Any], device: torch.device) -> bool:
    """``channels_last: auto`` is on for a GPU (tensor-core convolutions want NHWC) and on a CPU with oneDNN.

    On the CPU, oneDNN's NHWC convolutions measured 1.3-2x faster than NCHW for the CIFAR ResNets here
    (README "Performance"); it also means CPU tests run the memory layout GPU trials use.
    """
    value = cfg.get("channels_last", "auto")
    if value != "auto":
        return bool(value)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.mkldnn.is_available()


def memory_fraction(cfg: Mapping[str, Any], gpu_share: float | None) -> float | None:
    """The allocator cap for this trial: ``gpu_memory_fraction`` if set, else derived from the GPU share.

    A trial holding a whole GPU (share >= 1) or running outside Ray gets no cap.
    """
    fraction = cfg.get("gpu_memory_fraction")
    if fraction is not None:
        return float(fraction)
    if gpu_share is not None and 0.0 < gpu_share < 1.0:
        return gpu_share * MEMORY_HEADROOM
    return None


def cap_gpu_memory(cfg: Mapping[str, Any], device: torch.device) -> float | None:
    """With fractional GPUs several trials share one card: cap this process's share of its memory.

    Returns the fraction applied (None when nothing was capped, e.g. on the CPU).
    """
    if device.type != "cuda":
        return None
    fraction = memory_fraction(cfg, ray_gpu_share())
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def configure_backends(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution algorithms: the loop's input shapes never change."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
