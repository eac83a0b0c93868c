"""``python -m benchmarks.stream [--json]``: a search-like stage with and without the teacher stream.

Four ``kd`` trials on one seed (as a search stage runs them) on CIFAR-shaped synthetic data, a seeded
resnet32x4 teacher and resnet8x4 students, as one real Ray Tune experiment per mode, run one after the
other in this process: ``live`` (``teacher_stream: false``, every trial runs the teacher) and ``stream``
(the trials share ``<tmp>/teacher_stream``). The trials differ in ``lr`` only, so they meet the teacher
on the same batches. Prints wall time and training images/s of each mode, their ratio, and the teacher
passes computed against those requested (from the trials' ``teacher_calls_computed`` / ``teacher_calls``)
and the machine's 1-minute load average before and after each mode (other jobs change the figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LRS = (0.05, 0.04, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001)


def trial_space(args: argparse.Namespace, teacher_file: Path, stream_dir: Path | None) -> dict[str, Any]:
    from ray import tune

    return {
        "method": "kd",
        "teacher": args.teacher,
        "teacher_checkpoint": str(teacher_file),
        "student": args.student,
        "dataset": "synthetic",
        "synthetic_size": args.images,
        "synthetic_classes": 100,
        "synthetic_image_size": 32,
        "val_fraction": 0.05,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": 0,
        "device": args.device,
        "bound_metrics": False,
        "teacher_stream": stream_dir is not None,
        "teacher_stream_dir": str(stream_dir) if stream_dir else None,
        "lr": tune.grid_search(list(LRS[: args.trials])),
    }


def run_mode(args: argparse.Namespace, teacher_file: Path, work: Path, stream: bool) -> dict[str, Any]:
    from ray import tune

    from study.trainable import trainable_for

    name = "stream" if stream else "live"
    space = trial_space(args, teacher_file, work / "teacher_stream" if stream else None)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable_for("kd"), {k: v for k, v in resources.items() if v}),
        param_space=space,
        run_config=tune.RunConfig(name=name, storage_path=str(work / "ray"), verbose=0),
    )
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's tables go to stderr: stdout is the result
        results = tuner.fit()
    wall = time.perf_counter() - start
    finals = [r.metrics for r in results]
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"{name}: {len(errors)} trial(s) failed: {errors[0][:500]}")
    images = sum(int(m["epoch"]) for m in finals) * train_images(args)
    return {
        "mode": name,
        "load_1min": [load, os.getloadavg()[0]],
        "wall_s": wall,
        "img_s": images / wall,
        "teacher_calls": sum(int(m["teacher_calls"]) for m in finals),
        "teacher_calls_computed": sum(int(m["teacher_calls_computed"]) for m in finals),
        "val_top1": [m["val/top1"] for m in finals],
    }


def train_images(args: argparse.Namespace) -> int:
    """Training images per epoch of one trial (the synthetic set minus its validation share)."""
    from trainables.data import build_data

    data = build_data({"dataset": "synthetic", "synthetic_size": args.images, "synthetic_classes": 100,
                       "synthetic_image_size": 32, "val_fraction": 0.05})
    return len(data.train)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--images", type=int, default=3000, help="synthetic images (5%% of them validation)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trials", type=int, default=4, choices=range(2, len(LRS) + 1))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per trial: --gpus-per-trial)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import ray
    import torch

    from trainables import models

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    with tempfile.TemporaryDirectory(prefix="kd-stream-bench-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        teacher_file = work / f"teacher_{args.teacher}.pt"
        torch.save({"model": models.create(args.teacher, num_classes=100).state_dict()}, teacher_file)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            live = run_mode(args, teacher_file, work, stream=False)
            stream = run_mode(args, teacher_file, work, stream=True)
        finally:
            ray.shutdown()
    out = {"settings": vars(args), "live": live, "stream": stream, "ratio": live["wall_s"] / stream["wall_s"]}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"stream benchmark: {args.trials} kd trials, {args.teacher} -> {args.student}, {args.epochs} epochs of "
          f"{train_images(args)} synthetic images, batch {args.batch_size}, device {args.device}")
    for r in (live, stream):
        print(f"  {r['mode']:>6}: {r['wall_s']:8.1f} s  {r['img_s']:8.1f} img/s  teacher passes computed "
              f"{r['teacher_calls_computed']} of {r['teacher_calls']} requested  (load "
              f"{r['load_1min'][0]:.1f} -> {r['load_1min'][1]:.1f} on {os.cpu_count()} cores)")
    print(f"  ratio (live wall / stream wall): {out['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
