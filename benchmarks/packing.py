"""Packing: N concurrent trials on one device against one trial holding all of it (``--pack N``).

Each loop (platform, reference) runs as one trial with the whole GPU (or all the cores), then as N
concurrent trials with 1/N of it each. Every trial builds and warms up on its own, waits at a barrier,
then times its steps; the round's figure is all the trials' images over the common wall-clock window
(first start to last end: ``aggregate``). Two backends start the trials:

* ``ray``: Ray tasks at ``gpu: 1/N`` and ``cpu: cores/N``, what a study's trials get; a Ray actor is
  the barrier. Inside a task the allocator cap follows from Ray's share (``trainables.device``).
* ``processes``: N processes of the benchmark's own (multiprocessing, spawn), for machines without
  Ray. Each sees the whole GPU and caps its allocator at the fraction a Ray trial at ``gpu: 1/N`` would
  (``trainables.device.memory_fraction``), and takes cores/N torch threads; a multiprocessing barrier.

Without a GPU both measure how the trials share the CPU cores, nothing about GPU packing.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .throughput import LOOPS, Settings, default_workers, make_teacher_file, measure

BACKENDS = ("ray", "processes")
BARRIER_TIMEOUT_S = 600.0
"""How long a warmed-up trial waits for the others before its round fails (building a trial is slow)."""


class PackError(RuntimeError):
    """A packed trial failed or died; the round's figure would be meaningless."""


def timed_trial(
    loop: str, settings: dict[str, Any], teacher_file: str, threads: int, wait: Callable[[], None]
) -> dict[str, Any]:
    """Body of one packed trial, whatever started it: build, warm up, ``wait`` for the others, time."""
    torch.set_num_threads(max(1, int(threads)))
    m = measure(loop, Settings(**settings), Path(teacher_file), wait)
    return {"images": m.images, "seconds": m.seconds, "t_start": m.t_start, "t_end": m.t_end, **m.details}


def aggregate(results: Sequence[dict[str, Any]], cpus: float, gpus: float) -> dict[str, Any]:
    """One round's figures: the aggregate images/s over the common window, and each trial's own."""
    t_start = min(r["t_start"] for r in results)
    t_end = max(r["t_end"] for r in results)
    window = t_end - t_start
    images = sum(r["images"] for r in results)
    return {
        "trials": len(results),
        "cpu_per_trial": cpus,
        "gpu_per_trial": gpus,
        "img_s": images / window if window > 0 else float("nan"),
        "window_s": window,
        "per_trial_img_s": [r["images"] / r["seconds"] for r in results],
        "windows": [[r["t_start"] - t_start, r["t_end"] - t_start] for r in results],
        "device": results[0]["device"],
        "workers": results[0].get("workers"),
        "gpu_memory_fraction": results[0].get("gpu_memory_fraction"),
    }


# -- Ray ----------------------------------------------------------------------------------------------------
def _barrier_actor(n: int) -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Barrier:
        """Trials report when warmed up; the timed steps start once all of them have."""

        def __init__(self, n: int) -> None:
            self.n, self.count = n, 0

        def arrive(self) -> None:
            self.count += 1

        def ready(self) -> bool:
            return self.count >= self.n

    return Barrier.remote(n)


def _ray_trial(loop: str, settings: dict[str, Any], teacher_file: str, barrier: Any, cpus: float) -> dict[str, Any]:
    """One packed trial as a Ray task."""
    import ray

    def wait_for_all() -> None:
        ray.get(barrier.arrive.remote())
        deadline = time.time() + BARRIER_TIMEOUT_S
        while not ray.get(barrier.ready.remote()) and time.time() < deadline:
            time.sleep(0.02)

    return timed_trial(loop, settings, teacher_file, int(cpus), wait_for_all)


def _per_trial_cpus(total: float, n: int) -> float:
    """Ray takes fractions below 1 and whole numbers above: cores/N rounded down to what it accepts."""
    share = total / n
    return share if share < 1 else float(int(share))


class RayRounds:
    """Rounds through Ray tasks (a local Ray runtime is started when none is running)."""

    name = "ray"

    def __enter__(self) -> RayRounds:
        import ray

        self._started = not ray.is_initialized()
        if self._started:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.cpus = float(ray.cluster_resources().get("CPU", 1.0))
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()

    def round(self, loop: str, settings: Settings, teacher_file: Path, n: int, use_gpu: bool) -> dict[str, Any]:
        import ray

        cpus, gpus = _per_trial_cpus(self.cpus, n), (1.0 / n if use_gpu else 0.0)
        barrier = _barrier_actor(n)
        task = ray.remote(_ray_trial).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        per_trial = replace(settings, workers=settings.workers or default_workers(cpus))
        try:
            results = ray.get([task.remote(loop, asdict(per_trial), str(teacher_file), barrier, cpus)
                               for _ in range(n)])
        finally:
            ray.kill(barrier)
        return aggregate(results, cpus, gpus)


# -- processes ----------------------------------------------------------------------------------------------
def _process_trial(
    results: Any, barrier: Any, index: int, loop: str, settings: dict[str, Any], teacher_file: str, threads: int
) -> None:
    """One packed trial as a process of its own: its result (or its error) goes back through ``results``."""
    try:
        result = timed_trial(loop, settings, teacher_file, threads, lambda: barrier.wait(BARRIER_TIMEOUT_S))
    except BaseException as err:  # noqa: BLE001 - any failure must reach the parent, which reports it
        barrier.abort()  # the others stop waiting instead of timing out
        results.put((index, None, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        return
    results.put((index, result, None))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ProcessRounds:
    """Rounds of N processes started here (spawn: no CUDA state is inherited), without Ray."""

    name = "processes"

    def __enter__(self) -> ProcessRounds:
        self.cpus = float(_cores())
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def round(self, loop: str, settings: Settings, teacher_file: Path, n: int, use_gpu: bool) -> dict[str, Any]:
        from trainables.device import memory_fraction

        threads = max(1, int(self.cpus) // n)
        gpus = 1.0 / n if use_gpu else 0.0
        per_trial = replace(
            settings,
            workers=settings.workers or default_workers(threads),
            gpu_memory_fraction=memory_fraction({}, gpus) if use_gpu else None,
        )
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        args = (loop, asdict(per_trial), str(teacher_file), threads)
        # not daemonic: the reference loop's DataLoader starts worker processes of its own
        procs = [ctx.Process(target=_process_trial, args=(results, barrier, i, *args)) for i in range(n)]
        for p in procs:
            p.start()
        try:
            got = self._collect(results, procs)
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
                    p.join()
        return aggregate(got, float(threads), gpus)

    @staticmethod
    def _collect(results: Any, procs: list[Any]) -> list[dict[str, Any]]:
        got: dict[int, dict[str, Any]] = {}
        while len(got) < len(procs):
            try:
                index, result, error = results.get(timeout=1.0)
            except queue.Empty:
                dead = [i for i, p in enumerate(procs) if i not in got and p.exitcode not in (None, 0)]
                if dead:
                    raise PackError(f"packed trial {dead[0]} died (exit code {procs[dead[0]].exitcode})") from None
                continue
            if error is not None:
                raise PackError(f"packed trial {index} failed: {error}")
            got[index] = result
        return [got[i] for i in range(len(procs))]


# -- both backends ------------------------------------------------------------------------------------------
def run_pack(settings: Settings, n: int, loops: Sequence[str] = LOOPS, backend: str = "ray") -> dict[str, Any]:
    """N trials at 1/N of the GPU (or of the cores) against one trial with all of it, for each loop."""
    from trainables.device import gpus_available

    if backend not in BACKENDS:
        raise ValueError(f"pack backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rounds = RayRounds() if backend == "ray" else ProcessRounds()
    with rounds, tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        use_gpu = settings.device != "cpu" and gpus_available() >= 1
        out: dict[str, Any] = {"mode": "pack", "backend": rounds.name, "trials": n, "gpu": use_gpu,
                               "cpus": rounds.cpus}
        teacher_file = make_teacher_file(settings, Path(tmp))
        for loop in loops:
            single = rounds.round(loop, settings, teacher_file, 1, use_gpu)
            packed = rounds.round(loop, settings, teacher_file, n, use_gpu)
            out[loop] = {"single": single, "packed": packed, "packing_gain": packed["img_s"] / single["img_s"]}
    if "platform" in out and "reference" in out:
        out["ratio_packed"] = out["platform"]["packed"]["img_s"] / out["reference"]["packed"]["img_s"]
        out["ratio_single"] = out["platform"]["single"]["img_s"] / out["reference"]["single"]["img_s"]
    return out
