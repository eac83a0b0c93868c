"""The one training loop every method runs in.

``train(config, reporter, resume_from)`` is a plain function: Ray Tune trainables call it with a
``tune.report`` reporter, tests and debugging call it directly. Per epoch it trains, evaluates on the
validation split through the method's prediction path, runs the diagnostics, and reports the metrics
named in the README together with a checkpoint from which ``resume_from`` continues exactly. The teacher
a method reads is the trial's teacher source (``trainables.teacher``), built here from the config.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import models
from .compile import compile_step
from .config import resolve_config
from .data import DataBundle, Split, build_data
from .device import autocast_dtype, cap_gpu_memory, configure_backends, resolve_device, use_channels_last
from .diagnostics.epoch import EpochDiagnostics
from .errors import NonFiniteLossError
from .methods import Method, MethodContext, get_method
from .reporting import Reporter
from .teacher import FrozenTeacher, TeacherSource, build_source, load_teacher_model


@dataclass
class Trial:
    """Everything built for one trial, before the first epoch."""

    cfg: dict[str, Any]
    data: DataBundle
    method: Method
    teacher: TeacherSource | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    amp_dtype: torch.dtype | None
    step_fn: Any
    diagnostics: EpochDiagnostics


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of examples whose target is in the top-k predictions, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target[:, None])
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(
    method: Method, split: Split, batch_size: int, device: torch.device, amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) of ``method.predict`` on a split, in eval mode (NaN on an empty split,
    e.g. the validation split of ``val_fraction: 0``)."""
    was_training = method.training
    method.eval()
    correct1 = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for batch in split.batches(batch_size, shuffle=False, augment=False):
        with _autocast(device, amp_dtype):
            logits = method.predict(batch.x)
        c1, c5 = accuracy_counts(logits.float(), batch.y)
        correct1 += c1
        correct5 += c5
        n += int(batch.y.shape[0])
    method.train(was_training)
    if n == 0:
        return {"top1": math.nan, "top5": math.nan}
    return {"top1": 100.0 * correct1.item() / n, "top5": 100.0 * correct5.item() / n}


def build_trial(config: Mapping[str, Any], workdir: Path | None = None) -> Trial:
    """Validate the config and build data, models, method, optimizer and schedule for one trial."""
    cfg = resolve_config(config)
    method_cls = get_method(cfg["method"])
    device = resolve_device(cfg)
    cap_gpu_memory(cfg, device)
    configure_backends(device)
    amp_dtype = autocast_dtype(cfg, device)
    channels_last = use_channels_last(cfg, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    data = build_data(cfg).to(device)
    data.set_memory_format(memory_format)

    torch.manual_seed(int(cfg["seed"]))
    teacher = None
    if method_cls.needs_teacher:
        teacher_model = load_teacher_model(cfg["teacher"], cfg["teacher_checkpoint"], data.num_classes)
        network = FrozenTeacher(teacher_model, autocast_dtype=amp_dtype).to(device, memory_format)
        teacher = build_source(cfg, method_cls.teacher_plan(cfg), network, data.train)
    student = models.create(cfg[method_cls.model_key], num_classes=data.num_classes).to(device)
    ctx = MethodContext(
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        device=device,
        workdir=Path(workdir or Path.cwd()).absolute(),
        epochs=int(cfg["epochs"]),
        extras={"data": data},
    )
    method = method_cls(student, teacher, cfg, ctx).to(device)
    method.to(memory_format=memory_format)

    params = method.trainable_parameters()
    fused_ok = device.type == "cuda"
    optimizer = torch.optim.SGD(
        params,
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        nesterov=bool(cfg["nesterov"]) and float(cfg["momentum"]) > 0,
        weight_decay=float(cfg["weight_decay"]),
        **({"fused": True} if fused_ok else {"foreach": True}),
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg["lr_milestones"]), gamma=float(cfg["lr_decay"])
    )
    step_fn = method.training_step
    if cfg.get("compile"):
        step_fn = compile_step(method.training_step)
    diagnostics = EpochDiagnostics(cfg, method, data, data.num_classes, amp_dtype)
    return Trial(cfg, data, method, teacher, optimizer, scheduler, device, amp_dtype, step_fn, diagnostics)


def _trial_state(trial: Trial, epochs_done: int) -> dict[str, Any]:
    return {
        "epoch": epochs_done,
        "method": trial.method.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "rng": ckpt.rng_state(),
        "teacher": trial.teacher.state() if trial.teacher is not None else None,
        "extra": trial.method.extra_state(),
        "config": trial.cfg,
    }


def restore(trial: Trial, resume_from: str | Path) -> int:
    """Load a checkpoint into a freshly built trial; return the number of epochs already done."""
    state = ckpt.load_state(resume_from)
    trial.method.load_state_dict(state["method"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.scheduler.load_state_dict(state["scheduler"])
    extra = state.get("extra") or {}
    if trial.teacher is not None and state.get("teacher"):
        trial.teacher.load_state(state["teacher"], legacy_cache=extra.get("teacher_cache"))
    trial.method.load_extra_state(extra)
    ckpt.set_rng_state(state["rng"])
    return int(state["epoch"])


class NonFiniteWatch:
    """Remember which loss terms were the first to turn NaN/inf, without a host sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.names: list[str] = []
        self.all_finite = torch.ones((), dtype=torch.bool, device=device)
        self.first_bad: torch.Tensor | None = None
        self.first_step = torch.zeros((), dtype=torch.long, device=device)
        self.step = 0

    def update(self, losses: dict[str, torch.Tensor]) -> None:
        if not self.names:
            self.names = list(losses)
            self.first_bad = torch.zeros(len(self.names), dtype=torch.bool, device=self.all_finite.device)
        bad_now = torch.stack([~torch.isfinite(v.detach()) for v in losses.values()])
        newly = self.all_finite & bad_now.any()
        self.first_bad = torch.where(newly, bad_now, self.first_bad)
        self.first_step = torch.where(newly, torch.full_like(self.first_step, self.step), self.first_step)
        self.all_finite = self.all_finite & ~bad_now.any()
        self.step += 1

    def check(self, epoch: int, cfg: Mapping[str, Any]) -> None:
        if bool(self.all_finite.item()):
            return
        bad = [name for name, flag in zip(self.names, self.first_bad.tolist()) if flag]
        raise NonFiniteLossError(
            f"non-finite loss in term(s) {', '.join(bad)} at epoch {epoch + 1}, step {int(self.first_step) + 1} "
            f"(method '{cfg['method']}', lr {cfg['lr']}); lower the lr or that term's weight"
        )


def train_one_epoch(trial: Trial, epoch: int, max_steps: int | None = None) -> dict[str, float]:
    """One pass over the training split; returns mean loss terms, train top-1 and throughput.

    ``max_steps`` stops the pass early (the benchmark times the loop on a few batches with it).
    """
    method, cfg, device = trial.method, trial.cfg, trial.device
    method.train()
    if trial.teacher is not None:
        trial.teacher.on_epoch_start(epoch)
    method.on_epoch_start(epoch)
    sums: dict[str, torch.Tensor] = {}
    watch = NonFiniteWatch(device)
    total_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    batches = method.train_batches(trial.data.train, cfg, epoch)
    for batch in itertools.islice(batches, max_steps):
        with _autocast(device, trial.amp_dtype):
            result = trial.step_fn(batch, epoch)
        loss = sum(result.losses.values())
        trial.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.optimizer.step()
        n = int(batch.y.shape[0])
        watch.update(result.losses)
        for name, value in result.losses.items():
            sums[name] = sums.get(name, torch.zeros((), device=device)) + value.detach().float() * n
        total_sum += loss.detach().float() * n
        correct += (result.logits.detach().argmax(1) == batch.y).sum()
        seen += n
    if trial.teacher is not None:
        trial.teacher.on_train_epoch_end(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    trial.scheduler.step()
    watch.check(epoch, cfg)
    method.on_train_epoch_end(epoch)
    means = {name: float(value.item()) / max(seen, 1) for name, value in sums.items()}
    metrics = {"train/loss": float(total_sum.item()) / max(seen, 1)}
    metrics.update({f"train/loss_{name}": value for name, value in means.items()})
    metrics["train/top1"] = 100.0 * float(correct.item()) / max(seen, 1)
    metrics["train/images"] = seen  # student images forwarded by the training steps: the epoch's compute
    metrics["throughput/img_s"] = seen / elapsed if elapsed > 0 else float("nan")
    return metrics


def train(
    config: Mapping[str, Any],
    reporter: Reporter | None = None,
    resume_from: str | Path | None = None,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run (or continue) one trial; return the last epoch's metrics.

    ``reporter(metrics, checkpoint_dir)`` is called once per epoch; ``checkpoint_dir`` is a temporary
    folder the reporter must copy before returning (it is deleted afterwards).
    """
    trial = build_trial(config, Path(workdir) if workdir else None)
    cfg = trial.cfg
    start_epoch = restore(trial, resume_from) if resume_from else 0
    if start_epoch == 0:
        trial.diagnostics.before_training()
    epochs = int(cfg["epochs"])
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        metrics = {"epoch": epoch + 1, "lr": trial.optimizer.param_groups[0]["lr"]}
        metrics.update(train_one_epoch(trial, epoch))
        val = evaluate(trial.method, trial.data.val, int(cfg["eval_batch_size"]), trial.device, trial.amp_dtype)
        metrics["val/top1"], metrics["val/top5"] = val["top1"], val["top5"]
        last = epoch + 1 == epochs
        test_every = int(cfg["eval_test_every"] or 0)
        if last or (test_every and (epoch + 1) % test_every == 0):
            test = evaluate(trial.method, trial.data.test, int(cfg["eval_batch_size"]), trial.device, trial.amp_dtype)
            metrics["test/top1"], metrics["test/top5"] = test["top1"], test["top5"]
        if trial.teacher is not None:
            metrics.update(trial.teacher.epoch_metrics(epoch))
        metrics.update(trial.diagnostics.run(epoch))
        metrics["teacher_calls"] = trial.teacher.calls if trial.teacher is not None else 0
        metrics["teacher_calls_computed"] = trial.teacher.computed if trial.teacher is not None else 0
        trial.method.on_epoch_end(epoch, metrics)
        if last:
            trial.method.on_train_end(metrics)
        metrics["time/epoch_s"] = time.perf_counter() - t0
        _report(trial, reporter, metrics, epoch + 1, last)
    return metrics


def _report(trial: Trial, reporter: Reporter | None, metrics: dict[str, Any], epochs_done: int, last: bool) -> None:
    if reporter is None:
        return
    every = int(trial.cfg["checkpoint_every"] or 1)
    if not (last or epochs_done % every == 0):
        reporter(metrics, None)
        return
    with ckpt.staging_dir() as tmp:
        ckpt.save_state(tmp, _trial_state(trial, epochs_done))
        reporter(metrics, tmp)
