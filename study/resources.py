"""Per-trial resources sized against the Ray cluster's nodes, and a warning for a trial that cannot start.

A trial runs on one node, never across nodes, so a request is sized against the largest node, not the
cluster total: two one-CPU nodes hold two one-CPU trials but never one two-CPU trial. A request no node can
host is refused before the first stage (it would wait forever); a trial that waits anyway (a node left, other
jobs hold the resources) gets one warning line from ``PendingTrialWarning``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from .spec import Spec, SpecError
from .tally import TALLY

TEACHER_MAX_CPUS = 8.0
PENDING_WARNING_ENV = "KDSTUDY_PENDING_WARNING_S"
PENDING_WARNING_DEFAULT_S = 180.0


@dataclass(frozen=True)
class Node:
    """What one alive Ray node offers (logical resources, as Ray schedules them)."""

    address: str
    cpu: float
    gpu: float

    def hosts(self, request: Mapping[str, float]) -> bool:
        return self.cpu >= float(request.get("cpu", 0) or 0) and self.gpu >= float(request.get("gpu", 0) or 0)

    def shape(self) -> str:
        return f"{self.cpu:g} CPU, {self.gpu:g} GPU"


def cluster_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster (``ray.nodes()``)."""
    import ray

    nodes = []
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        res = info.get("Resources") or {}
        nodes.append(Node(str(info.get("NodeManagerAddress") or info.get("NodeID")), float(res.get("CPU", 0)),
                          float(res.get("GPU", 0))))
    return nodes


def describe_nodes(nodes: list[Node]) -> str:
    """``2 x (1 CPU, 0 GPU)``, largest shapes first."""
    counts = Counter((n.cpu, n.gpu) for n in nodes)
    shapes = sorted(counts, reverse=True)
    return ", ".join(f"{counts[s]} x ({Node('', *s).shape()})" for s in shapes) or "no alive node"


def largest_node(nodes: list[Node], request: Mapping[str, float]) -> Node | None:
    """The node closest to hosting ``request``: most GPUs first when GPUs are asked for, else most CPUs."""
    if not nodes:
        return None
    wants_gpu = float(request.get("gpu", 0) or 0) > 0
    return max(nodes, key=lambda n: (n.gpu, n.cpu) if wants_gpu else (n.cpu, n.gpu))


def describe_request(request: Mapping[str, float]) -> str:
    return f"{float(request.get('cpu', 0) or 0):g} CPU, {float(request.get('gpu', 0) or 0):g} GPU"


def trial_resources(spec: Spec, nodes: list[Node]) -> dict[str, float]:
    """The spec's per-trial ``resources``, checked against the nodes before any stage starts.

    No GPU anywhere: the trials run on the CPU (a warning says so). A request that no node can host is a
    ``SpecError`` (one line: the request and the largest node).
    """
    wanted = {"cpu": float(spec.data["resources"]["cpu"]), "gpu": float(spec.data["resources"]["gpu"])}
    if wanted["gpu"] > 0 and not any(n.gpu > 0 for n in nodes):
        warnings.warn("resources.gpu asked for but the Ray cluster has no GPU: trials run on CPU", stacklevel=2)
        print("warning: the Ray cluster has no GPU; running every trial on CPU (resources.gpu ignored)", flush=True)
        wanted["gpu"] = 0.0
    if not any(n.hosts(wanted) for n in nodes):
        big = largest_node(nodes, wanted)
        largest = big.shape() if big else "none"
        raise SpecError(f"resources ask {describe_request(wanted)} per trial, but no node of the Ray cluster has that "
                        f"much (a trial runs on one node; largest node: {largest}; nodes: {describe_nodes(nodes)}): "
                        "lower resources.cpu/resources.gpu")
    return wanted


def teacher_resources(resources: Mapping[str, float], nodes: list[Node], teachers: int) -> dict[str, float]:
    """Teachers are few and the rest of the study waits for them: each gets a share of the cluster's CPUs.

    The share (cluster CPUs / teachers, at most ``TEACHER_MAX_CPUS``) is capped by the CPUs of the largest
    node that holds the trial's GPUs, so the teacher trial always fits on one node.
    """
    total = sum(n.cpu for n in nodes)
    share = min(TEACHER_MAX_CPUS, max(1.0, float(int(total // max(1, teachers)))))
    hosts = [n.cpu for n in nodes if n.gpu >= float(resources.get("gpu", 0) or 0)]
    cap = max(hosts, default=float(resources["cpu"]))
    return {**resources, "cpu": max(float(resources["cpu"]), min(share, cap))}


def pending_warning_delay() -> float:
    """Seconds a trial may wait with nothing running before the warning (``KDSTUDY_PENDING_WARNING_S``)."""
    raw = os.environ.get(PENDING_WARNING_ENV, "")
    try:
        return float(raw) if raw else PENDING_WARNING_DEFAULT_S
    except ValueError:
        return PENDING_WARNING_DEFAULT_S


class PendingTrialWarning(Callback):
    """One warning line when a trial has waited ``pending_warning_delay()`` seconds while none runs.

    Nothing of the stage running means the trial waits for resources that are not there (a node left, other
    Ray jobs hold them): the line says what the trial asks for and what the nodes have, once per stage run.
    """

    def __init__(self, stage_name: str) -> None:
        self.stage_name = stage_name
        self._reset()

    def _reset(self) -> None:
        self._idle_since: float | None = None
        self._warned = False

    def setup(self, **info: Any) -> None:
        self._reset()  # a restored experiment starts its own clock

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._warned:
            return
        pending = [t for t in trials if t.status == "PENDING"]
        busy_elsewhere = TALLY.running_elsewhere(self.stage_name)  # another stage of the study holds the slots
        if not pending or busy_elsewhere or any(t.status == "RUNNING" for t in trials):
            self._idle_since = None
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        waited = now - self._idle_since
        if waited >= pending_warning_delay():
            self._warned = True
            print(self._message(pending, waited), flush=True)

    def _message(self, pending: list, waited: float) -> str:
        import ray

        factory = getattr(pending[0], "placement_group_factory", None)
        asks = dict(factory.required_resources) if factory is not None else {}
        request = {"cpu": asks.get("CPU", 0), "gpu": asks.get("GPU", 0)}
        free = ray.available_resources()
        others = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
        return (f"warning: [{self.stage_name}] trial {pending[0]}{others} has waited {waited:.0f} s with no trial "
                f"running: it asks for {describe_request(request)}; the nodes have {describe_nodes(cluster_nodes())}, "
                f"free now {free.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} GPU (other Ray jobs may hold them; "
                "a trial runs on one node)")
