"""Training throughput of the platform's loop against the plain loop KD codebases use, in one process.

Both loops train the same method (same student, teacher, connector and losses, built through the method
registry) on the same CIFAR-shaped synthetic images, one after the other, and the benchmark prints images
per second of each and their ratio (``--json`` for a machine-readable line).

* platform: ``trainables.loop.build_trial`` + ``train_one_epoch`` -- the code path every trial runs:
  device-resident uint8 data augmented on the device, ``amp``/``channels_last``/``compile`` as configured
  (``auto``: bf16 + NHWC on a GPU, fp32 + NHWC on a oneDNN CPU), the teacher under ``inference_mode``,
  fused (GPU) or foreach (CPU) SGD, no host sync per step.
* reference: what the usual KD code does (RepDistiller/mdistiller style): a torch ``DataLoader`` over PIL
  images with ``RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize`` in
  ``min(4, cores)`` worker processes, fp32, NCHW, the teacher under ``torch.no_grad()``, plain SGD, and a
  ``loss.item()`` per step for the running-average meter.

Each loop first runs ``--warmup`` steps (one-time costs: worker start, cuDNN autotuning, compilation),
then times up to ``--steps`` steps in chunks, stopping early rather than run past ``--max-seconds``.
By default the two loops' chunks alternate (``--order interleaved``), so a machine whose load changes
during the run slows both alike; ``--order sequential`` times one loop after the other. Only training
steps are timed (no evaluation).

``--pack N`` measures packing instead (``benchmarks.packing``): N concurrent trials, each with 1/N of the
GPU (or of the cores), against one trial holding all of it, for both loops, started through Ray
(``--pack-backend ray``) or as N processes of the benchmark's own (``processes``, no Ray needed).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_METHOD = "ijckd"
LOOPS = ("platform", "reference")


@dataclass
class Settings:
    """What one benchmark run trains and how long it measures."""

    method: str = "kd"
    student: str = "resnet8x4"
    teacher: str = "resnet32x4"
    batch_size: int = 64
    steps: int = 8
    warmup: int = 1
    max_seconds: float = 20.0
    device: str = "auto"
    amp: str = "auto"
    channels_last: str | bool = "auto"
    compile: bool = False
    workers: int | None = None
    classes: int = 100
    image_size: int = 32
    seed: int = 0
    threads: int | None = None
    gpu_memory_fraction: float | None = None
    compile_mode: str | None = None


@dataclass
class Measurement:
    """Images trained in the timed window and the window itself (wall-clock stamps for packing)."""

    loop: str
    images: int
    seconds: float
    steps: int
    t_start: float
    t_end: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def img_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


# -- shared set-up ----------------------------------------------------------------------------------------
def resolve_method(requested: str | None) -> tuple[str, str | None]:
    """The method to measure (``DEFAULT_METHOD`` unless one is asked for) and a note (None: nothing to say)."""
    from trainables.methods import get_method

    method = DEFAULT_METHOD if requested is None else requested
    get_method(method)  # unknown names fail with the list of registered ones
    return method, None


def make_teacher_file(settings: Settings, directory: Path) -> Path:
    """A seeded, untrained teacher of the right shape: speed does not depend on its weights."""
    from trainables import models

    torch.manual_seed(settings.seed)
    model = models.create(settings.teacher, num_classes=settings.classes)
    path = directory / f"teacher_{settings.teacher}.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def images_needed(settings: Settings) -> int:
    """Synthetic images so that the training split holds every warm-up and timed batch, plus slack."""
    train_images = (settings.warmup + settings.steps + 2) * settings.batch_size
    return int(math.ceil(train_images / 0.85)) + settings.classes


def trial_config(settings: Settings, teacher_file: Path) -> dict[str, Any]:
    """The platform trial config the benchmark trains (synthetic CIFAR-shaped data)."""
    cfg: dict[str, Any] = {
        "method": settings.method,
        "student": settings.student,
        "seed": settings.seed,
        "epochs": 240,
        "batch_size": settings.batch_size,
        "dataset": "synthetic",
        "synthetic_size": images_needed(settings),
        "synthetic_classes": settings.classes,
        "synthetic_image_size": settings.image_size,
        "device": settings.device,
        "amp": settings.amp,
        "channels_last": settings.channels_last,
        "compile": settings.compile,
        "checkpoint_every": 1,
    }
    if settings.gpu_memory_fraction is not None:
        cfg["gpu_memory_fraction"] = settings.gpu_memory_fraction
    from trainables.methods import get_method

    method_cls = get_method(settings.method)
    if method_cls.needs_teacher:
        cfg["teacher"] = settings.teacher
        cfg["teacher_checkpoint"] = str(teacher_file)
    elif method_cls.model_key == "teacher":
        cfg["teacher"] = settings.teacher
    return cfg


class Runner:
    """One loop ready to train: ``run(k)`` trains k steps and waits for the device; ``close()`` frees it."""

    loop: str = ""
    details: dict[str, Any]

    def run(self, k: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release temporary folders and worker processes."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Timed chunks of one runner: stops at ``--steps`` or before a chunk would end past ``--max-seconds``.

    Chunks are a tenth of ``--steps`` (one step with the CPU defaults): a host sync per chunk does not change
    what a GPU measures, and a slow machine stops on time. At least one chunk is timed.
    """

    def __init__(self, runner: Runner, settings: Settings) -> None:
        self.runner, self.settings = runner, settings
        self.chunk = max(1, settings.steps // 10)
        self.steps, self.seconds, self.last = 0, 0.0, 0.0
        self.t_start = self.t_end = 0.0

    @property
    def done(self) -> bool:
        return self.steps >= self.settings.steps or (
            self.steps > 0 and self.seconds + self.last > self.settings.max_seconds
        )

    def tick(self) -> None:
        if not self.steps:
            self.t_start = time.time()
        k = min(self.chunk, self.settings.steps - self.steps)
        t0 = time.perf_counter()
        self.runner.run(k)
        self.last = time.perf_counter() - t0
        self.seconds += self.last
        self.steps += k
        self.t_end = time.time()

    def measurement(self) -> Measurement:
        images = self.steps * self.settings.batch_size
        return Measurement(
            self.runner.loop, images, self.seconds, self.steps, self.t_start, self.t_end, self.runner.details
        )


# -- the platform loop ------------------------------------------------------------------------------------
class PlatformRunner(Runner):
    """``build_trial`` + ``train_one_epoch``, the trials' own code path; each chunk is a short epoch."""

    loop = "platform"

    def __init__(self, settings: Settings, teacher_file: Path) -> None:
        from trainables.compile import compile_step
        from trainables.loop import build_trial, train_one_epoch

        self._tmp = tempfile.TemporaryDirectory(prefix="kd-bench-")
        self.trial = build_trial(trial_config(settings, teacher_file), workdir=Path(self._tmp.name))
        self._train_one_epoch = train_one_epoch
        self._epoch = 0
        trial = self.trial
        if settings.compile_mode:  # an experiment (README "Performance"): the trials compile in default mode
            trial.step_fn = compile_step(trial.method.training_step, mode=settings.compile_mode)
        self.details = {
            "device": str(trial.device),
            "amp": str(trial.amp_dtype).replace("torch.", "") if trial.amp_dtype else "off",
            "channels_last": trial.data.train.memory_format == torch.channels_last,
            "compile": settings.compile_mode or bool(trial.cfg["compile"]),
            "gpu_memory_fraction": trial.cfg.get("gpu_memory_fraction"),
            "optimizer": "fused SGD" if trial.device.type == "cuda" else "foreach SGD",
            "data": "device-resident uint8, augmented on the device",
            "threads": torch.get_num_threads(),
        }

    def run(self, k: int) -> None:
        self._train_one_epoch(self.trial, self._epoch, max_steps=k)  # ends with a device sync
        self._epoch += 1

    def close(self) -> None:
        self._tmp.cleanup()


# -- the reference loop -----------------------------------------------------------------------------------
class PilImages(torch.utils.data.Dataset):
    """Images kept as HWC uint8 and handed to the transforms as PIL images, as torchvision's CIFAR does."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images = images_hwc
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i]), i


def reference_transform(mean: Sequence[float], std: Sequence[float], padding: int = 4, size: int = 32) -> Callable:
    """The CIFAR training transform of the KD codebases (RepDistiller, mdistiller, CRD)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomCrop(size, padding=padding),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def default_workers(cores: float | None = None) -> int:
    """The usual DataLoader worker count: 4, or fewer when the trial has fewer cores."""
    if cores is None:
        cores = os.cpu_count() or 1
    return max(1, min(4, int(cores)))


def _no_grad_teacher(model: torch.nn.Module) -> Any:
    from trainables.teacher import FrozenTeacher, TeacherOutput

    class NoGradTeacher(FrozenTeacher):
        """The teacher as reference code runs it: ``torch.no_grad()``, fp32, outputs used as they are."""

        def forward(self, x: torch.Tensor) -> TeacherOutput:
            with torch.no_grad():
                stages = self.model.forward_stages(x)
                logits = self.model.forward_head(stages[-1])
            return TeacherOutput(logits=logits, features=stages[-1], stages=stages)

    return NoGradTeacher(model)


class ReferenceRunner(Runner):
    """The plain DataLoader + PIL loop on the same method, images and device (see the module docstring)."""

    loop = "reference"

    def __init__(self, settings: Settings, teacher_file: Path) -> None:
        from trainables import models
        from trainables.config import resolve_config
        from trainables.data import build_data
        from trainables.device import cap_gpu_memory, resolve_device
        from trainables.methods import MethodContext, get_method
        from trainables.teacher import build_source, load_teacher_model

        plain = {"amp": "off", "channels_last": False, "compile": False}
        cfg = resolve_config({**trial_config(settings, teacher_file), **plain})
        self.device = device = resolve_device(cfg)
        fraction = cap_gpu_memory(cfg, device)  # a packed trial shares the card as the platform's do
        data = build_data(cfg)
        split = data.train
        images = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        transform = reference_transform(split.mean, split.std, size=settings.image_size)
        dataset = PilImages(images, split.labels.numpy(), transform)
        data.to(device)  # only for methods that look at ctx.extras["data"]; the loop reads the DataLoader
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the reference codebases set it
        workers = settings.workers if settings.workers is not None else default_workers()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=settings.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            generator=torch.Generator().manual_seed(settings.seed),
        )
        method_cls = get_method(cfg["method"])
        torch.manual_seed(settings.seed)
        teacher = None
        if method_cls.needs_teacher:
            model = load_teacher_model(cfg["teacher"], cfg["teacher_checkpoint"], data.num_classes)
            teacher = build_source(cfg, method_cls.teacher_plan(cfg), _no_grad_teacher(model.to(device)), data.train)
        student = models.create(cfg[method_cls.model_key], num_classes=data.num_classes).to(device)
        self._tmp = tempfile.TemporaryDirectory(prefix="kd-bench-")
        ctx = MethodContext(
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            device=device,
            workdir=Path(self._tmp.name),
            epochs=int(cfg["epochs"]),
            extras={"data": data},
        )
        self.method = method_cls(student, teacher, cfg, ctx).to(device)
        self.optimizer = torch.optim.SGD(
            self.method.trainable_parameters(),
            lr=float(cfg["lr"]),
            momentum=float(cfg["momentum"]),
            nesterov=bool(cfg["nesterov"]) and float(cfg["momentum"]) > 0,
            weight_decay=float(cfg["weight_decay"]),
        )
        self.method.train()
        if teacher is not None:
            teacher.on_epoch_start(0)
        self.method.on_epoch_start(0)
        self._batches = iter(loader)
        self.meter = {"loss": 0.0, "n": 0}
        self.details = {
            "device": str(device),
            "amp": "off",
            "channels_last": False,
            "workers": workers,
            "gpu_memory_fraction": fraction,
            "optimizer": "SGD (torch defaults)",
            "data": "DataLoader + torchvision PIL transforms",
            "threads": torch.get_num_threads(),
        }

    def step(self) -> None:
        from trainables.data import Batch

        x, y, idx = next(self._batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        result = self.method.training_step(Batch(x, y, idx.to(self.device), augmented=True), 0)
        loss = sum(result.losses.values())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.meter["loss"] += loss.item() * x.shape[0]  # the usual AverageMeter: a host sync per step
        self.meter["n"] += x.shape[0]

    def run(self, k: int) -> None:
        for _ in range(k):
            self.step()
        _sync(self.device)

    def close(self) -> None:
        self._batches = None  # shuts the DataLoader workers down
        self._tmp.cleanup()


RUNNERS: dict[str, type[Runner]] = {"platform": PlatformRunner, "reference": ReferenceRunner}


def measure(
    loop: str, settings: Settings, teacher_file: Path, barrier: Callable[[], None] | None = None
) -> Measurement:
    """One loop on its own: build, warm up, (wait for the other packed trials,) time."""
    runner = RUNNERS[loop](settings, teacher_file)
    try:
        runner.run(settings.warmup)
        if barrier is not None:
            barrier()
        clock = Clock(runner, settings)
        while not clock.done:
            clock.tick()
        return clock.measurement()
    finally:
        runner.close()


def measure_interleaved(settings: Settings, teacher_file: Path, loops: Sequence[str]) -> list[Measurement]:
    """All loops built and warmed up, then timed in alternating chunks, so load changes hit them alike.

    Any bias is against the platform: the reference's DataLoader workers keep preparing batches (and using
    cores) while the platform's chunk runs, and start its own chunk with batches ready.
    """
    return time_interleaved([RUNNERS[loop](settings, teacher_file) for loop in loops], settings)


def time_interleaved(runners: Sequence[Runner], settings: Settings) -> list[Measurement]:
    """Warm every runner up, then time them in alternating chunks (one measurement each); closes them."""
    try:
        for runner in runners:
            runner.run(settings.warmup)
        clocks = [Clock(runner, settings) for runner in runners]
        while not all(clock.done for clock in clocks):
            for clock in clocks:
                if not clock.done:
                    clock.tick()
        return [clock.measurement() for clock in clocks]
    finally:
        for runner in runners:
            runner.close()


# -- one process, both loops ------------------------------------------------------------------------------
def run_single(settings: Settings, loops: Sequence[str] = LOOPS, order: str = "interleaved") -> dict[str, Any]:
    """Both loops in this process (``order``: interleaved chunks or one after the other); with the ratio."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out: dict[str, Any] = {"mode": "single", "order": order}
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        teacher_file = make_teacher_file(settings, Path(tmp))
        if order == "interleaved":
            results = measure_interleaved(settings, teacher_file, loops)
        else:
            results = [measure(loop, settings, teacher_file) for loop in loops]
    for m in results:
        out[m.loop] = {"img_s": m.img_s, "images": m.images, "seconds": m.seconds, "steps": m.steps, **m.details}
    if "platform" in out and "reference" in out:
        out["ratio"] = out["platform"]["img_s"] / out["reference"]["img_s"]
    return out


# -- command line -----------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures came from (the load average matters on a shared machine)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Training images/s of the platform loop vs a plain DataLoader+PIL reference loop.",
    )
    p.add_argument("--method", default=None, help=f"method to train (default {DEFAULT_METHOD})")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop (default 8 on CPU, 100 on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 10 on GPU)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cap on each loop's timed phase (default 20 s on CPU, 60 s on GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:<i>")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"], help="platform loop only")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"], help="platform loop only")
    p.add_argument("--compile", action="store_true", help="torch.compile the platform's training step")
    p.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune",
                   "max-autotune-no-cudagraphs"], help="torch.compile mode for the platform step (implies --compile)")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default min(4, cores))")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loops", default=",".join(LOOPS), help="which loops to run (platform,reference)")
    p.add_argument("--order", default="interleaved", choices=["interleaved", "sequential"],
                   help="time the loops in alternating chunks (default) or one after the other")
    p.add_argument("--pack", type=int, default=0, metavar="N",
                   help="packing mode: N concurrent trials at 1/N of the GPU vs one trial on the whole GPU")
    p.add_argument("--pack-backend", default="ray", choices=["ray", "processes"],
                   help="who starts the packed trials: Ray tasks, or N processes of the benchmark (no Ray)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, torch.device, str | None]:
    from trainables.device import resolve_device

    if args.batch_size < 1:
        raise SystemExit("--batch-size must be >= 1")
    method, note = resolve_method(args.method)
    device = resolve_device({"device": args.device})
    gpu = device.type == "cuda"
    steps = args.steps if args.steps is not None else (100 if gpu else 8)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    if steps < 1 or warmup < 1:
        raise SystemExit("--steps and --warmup must be >= 1")
    channels_last = {"auto": "auto", "on": True, "off": False}[args.channels_last]
    settings = Settings(
        method=method,
        student=args.student,
        teacher=args.teacher,
        batch_size=args.batch_size,
        steps=steps,
        warmup=warmup,
        max_seconds=args.max_seconds if args.max_seconds is not None else (60.0 if gpu else 20.0),
        device=args.device,
        amp=args.amp,
        channels_last=channels_last,
        compile=args.compile or args.compile_mode is not None,
        compile_mode=args.compile_mode,
        workers=args.workers,
        classes=args.classes,
        image_size=args.image_size,
        seed=args.seed,
        threads=args.threads,
    )
    return settings, device, note


def _compile_text(value: str | bool | None) -> str:
    return value if isinstance(value, str) else ("on" if value else "off")


def format_text(result: dict[str, Any]) -> str:
    """The human-readable report."""
    s, m = result["settings"], result["machine"]
    lines = [
        f"throughput: {s['method']} {s['teacher']} -> {s['student']}, batch {s['batch_size']}, synthetic "
        f"3x{s['image_size']}x{s['image_size']}, {s['classes']} classes",
        f"machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m.get('gpu', m['device'])}"
        + (f", load average {m['load_avg_1m']}" if "load_avg_1m" in m else ""),
    ]
    if result["mode"] == "single":
        lines.append(f"loops timed {result['order']}")
        for loop in LOOPS:
            if loop not in result:
                continue
            r = result[loop]
            how = (
                f"amp {r['amp']}, channels_last {'on' if r['channels_last'] else 'off'}, "
                f"compile {_compile_text(r.get('compile'))}, {r['optimizer']}, {r['data']}"
                if loop == "platform"
                else f"DataLoader {r['workers']} workers + torchvision PIL transforms, fp32, NCHW, no_grad teacher"
            )
            lines.append(f"{loop:<10} {r['img_s']:10.1f} img/s  ({r['steps']} steps, {r['seconds']:.1f} s; {how})")
        if "ratio" in result:
            lines.append(f"{'ratio':<10} {result['ratio']:10.2f}x  (platform / reference)")
    else:
        kind = "GPU" if result["gpu"] else "CPU cores (no GPU: this is CPU packing)"
        lines.append(f"packing {result['trials']} trials ({result['backend']} backend) on {kind}")
        for loop in LOOPS:
            if loop not in result:
                continue
            r = result[loop]
            one, many = r["single"], r["packed"]
            lines.append(
                f"{loop:<10} 1 trial {one['img_s']:9.1f} img/s | {many['trials']} trials {many['img_s']:9.1f} img/s "
                f"aggregate (cpu {many['cpu_per_trial']:g}, gpu {many['gpu_per_trial']:g} each) | "
                f"gain {r['packing_gain']:.2f}x"
            )
        if "ratio_packed" in result:
            lines.append(
                f"{'ratio':<10} packed {result['ratio_packed']:.2f}x, single {result['ratio_single']:.2f}x "
                "(platform / reference)"
            )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
