"""``python -m benchmarks methods [--methods kd,at,...] [--json]``: the cost of a training step of each method
relative to the first one (``kd`` by default), measured side by side in one process.

Every method trains the platform's own loop (``build_trial`` + ``train_one_epoch``, as its trials do) on the
throughput benchmark's pair and synthetic CIFAR-shaped data; the loops are timed in alternating chunks
(``benchmarks.throughput.time_interleaved``), so a change of the machine's load hits them alike. What a
method adds to ``kd`` shows as its step time over ``kd``'s: its extra modules (connectors, embedding heads,
regressors), the teacher's feature maps, CRD's memory bank.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .throughput import PlatformRunner, Settings, machine_info, make_teacher_file, time_interleaved

DEFAULT_METHODS = ("kd", "fitnet", "at", "vid", "rkd", "pkt", "crd", "ofd", "wsld", "dkd", "srrl", "simkd", "ijckd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks methods", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated methods; the first is the baseline (default: kd and the distillers)")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="timed steps per method")
    p.add_argument("--max-seconds", type=float, default=20.0, help="cap on each method's timed phase")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<i>")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def measure_methods(settings: Settings, methods: Sequence[str]) -> dict[str, Any]:
    """Images/s of each method's platform loop, timed interleaved, and its step time relative to the first."""
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        teacher_file = make_teacher_file(settings, Path(tmp))
        runners = [PlatformRunner(dataclasses.replace(settings, method=m), teacher_file) for m in methods]
        measured = time_interleaved(runners, settings)
    base = measured[0].img_s
    rows = {m: {"img_s": r.img_s, "steps": r.steps, "seconds": r.seconds, "step_cost": base / r.img_s}
            for m, r in zip(methods, measured)}
    return {"baseline": methods[0], "methods": rows}


def main(argv: Sequence[str] | None = None) -> int:
    from trainables.device import resolve_device
    from trainables.methods import get_method

    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise SystemExit(f"--methods takes a comma-separated list of distinct methods; got '{args.methods}'")
    for m in methods:
        get_method(m)  # an unknown name fails here with the registered ones, before anything trains
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(student=args.student, teacher=args.teacher, batch_size=args.batch_size, steps=args.steps,
                        warmup=1, max_seconds=args.max_seconds, device=args.device)
    result = measure_methods(settings, methods)
    result["settings"] = dataclasses.asdict(settings)
    result["machine"] = machine_info(resolve_device({"device": args.device}))
    if hasattr(os, "getloadavg"):
        result["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result, default=str))
        return 0
    m = result["machine"]
    print(f"step cost per method: {args.teacher} -> {args.student}, batch {args.batch_size}, synthetic 3x32x32, "
          f"{m['device']}, {m['torch_threads']} threads, load {m.get('load_avg_1m')} -> {m.get('load_avg_1m_after')}")
    for name, row in result["methods"].items():
        print(f"{name:<8} {row['img_s']:9.1f} img/s  {row['step_cost']:5.2f}x {result['baseline']}'s step time "
              f"({row['steps']} steps, {row['seconds']:.1f} s)")
    return 0
