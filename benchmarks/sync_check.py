"""Host synchronisations in the platform's training step, counted with ``torch.cuda.set_sync_debug_mode``.

``python -m benchmarks.sync_check [--method M --student S --teacher T --steps K --compile --json]``

A step that waits for the GPU (``.item()``, a device-to-host copy, a blocking sync) stalls the launch
queue; at CIFAR sizes on a fast GPU that costs more than the arithmetic. In ``warn`` mode CUDA reports
every synchronising call; this counts them over ``train_one_epoch`` of K and of 2K steps, so the
epoch's fixed ones (the order copy, the closing sync and ``.item()`` calls) cancel and the difference
over K is the count per step, with the source lines they come from (innermost frame in this repository).
Without CUDA nothing can be counted: the steps still run and the result says ``checked: false``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _call_site() -> str:
    """The innermost frame of this repository's code (outside this module) on the current stack."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if path.is_relative_to(ROOT) and path != Path(__file__).resolve():
            return f"{path.relative_to(ROOT)}:{frame.lineno} ({frame.name})"
    return "outside the repository"


@contextlib.contextmanager
def recording_syncs(device: torch.device) -> Iterator[list[str] | None]:
    """Collect the call site of every synchronising CUDA call in the block; None on a device without CUDA."""
    if device.type != "cuda":
        yield None
        return
    sites: list[str] = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
            if "synchroniz" in str(message).lower():
                sites.append(_call_site())
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode(previous)


def count_step_syncs(trial: Any, steps: int) -> dict[str, Any]:
    """Synchronising calls per training step of a built trial (see the module docstring)."""
    from trainables.loop import train_one_epoch

    train_one_epoch(trial, 0, max_steps=steps)  # warm-up: lazy initialisation, cuDNN autotuning, compilation
    with recording_syncs(trial.device) as short:
        train_one_epoch(trial, 1, max_steps=steps)
    with recording_syncs(trial.device) as long:
        train_one_epoch(trial, 2, max_steps=2 * steps)
    out: dict[str, Any] = {"device": str(trial.device), "steps": steps, "checked": short is not None}
    if short is None or long is None:
        return out
    per_step = Counter(long)
    per_step.subtract(Counter(short))
    out["syncs_per_epoch_fixed"] = len(short) - (len(long) - len(short))
    out["syncs_per_step"] = (len(long) - len(short)) / steps
    out["step_sites"] = {site: count / steps for site, count in per_step.most_common() if count > 0}
    out["all_sites"] = dict(Counter(long).most_common())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.throughput import Settings, make_teacher_file, resolve_method, trial_config
    from trainables.loop import build_trial

    p = argparse.ArgumentParser(prog="python -m benchmarks.sync_check", description=__doc__.splitlines()[0])
    p.add_argument("--method", default=None)
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=8, help="K: steps of the shorter epoch (the longer has 2K)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        raise SystemExit("--steps and --batch-size must be >= 1")
    method, _ = resolve_method(args.method)
    settings = Settings(method=method, student=args.student, teacher=args.teacher, batch_size=args.batch_size,
                        steps=2 * args.steps, warmup=args.steps, device=args.device, compile=args.compile,
                        classes=args.classes)
    with tempfile.TemporaryDirectory(prefix="kd-sync-") as tmp:
        trial = build_trial(trial_config(settings, make_teacher_file(settings, Path(tmp))), workdir=Path(tmp))
        result = {"method": method, "student": args.student, "teacher": args.teacher, "compile": args.compile,
                  **count_step_syncs(trial, args.steps)}
    if args.json:
        print(json.dumps(result))
    elif not result["checked"]:
        print(f"ran {args.steps} + {2 * args.steps} steps on {result['device']}: no CUDA, nothing to count")
    else:
        print(f"{result['syncs_per_step']:g} synchronising CUDA calls per step, "
              f"{result['syncs_per_epoch_fixed']} per epoch ({method}, {result['device']})")
        for site, count in result["step_sites"].items():
            print(f"  {count:g} per step at {site}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
