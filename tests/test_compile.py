"""Compile support without its import cost: a trial that does not compile never imports TorchDynamo, and one
that does keeps the ``@eager`` methods (the teacher's call counters) out of the graph."""

from __future__ import annotations

import subprocess
import sys

import torch

from trainables.compile import compile_step, eager, exclude_eager_methods


def test_a_trial_actors_imports_leave_out_dynamo_and_torchvision():
    code = ("import sys, study.trainable, trainables.loop, trainables.models, trainables.methods; "
            "print(sorted(m for m in ('torch._dynamo', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_eager_methods_run_outside_the_compiled_graph():
    class Counter:
        def __init__(self) -> None:
            self.calls = 0

        @eager
        def count(self, n: int) -> None:
            self.calls += n

    counter = Counter()

    def step(x: torch.Tensor) -> torch.Tensor:
        counter.count(int(x.shape[0]))
        return (x * 2).sum()

    compiled = compile_step(step, backend="eager")  # Dynamo's tracing without a C++ toolchain
    for n in (3, 5, 3):
        assert compiled(torch.ones(n)).item() == 2 * n
    assert counter.calls == 11  # every call counted: the counter is not traced into a guard
    assert getattr(Counter.count, "_torchdynamo_disable", False)


def test_the_teacher_counters_are_marked_and_wrapped_once():
    from trainables.teacher.source import TeacherSource

    exclude_eager_methods()
    first = {name: TeacherSource.__dict__[name] for name in ("count", "_computed", "_through_stream")}
    assert all(getattr(fn, "_torchdynamo_disable", False) for fn in first.values())
    exclude_eager_methods()
    assert {name: TeacherSource.__dict__[name] for name in first} == first  # not wrapped twice
