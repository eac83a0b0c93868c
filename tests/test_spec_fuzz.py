"""Property: whatever a spec file holds, ``python -m study validate`` accepts it or exits 2 with one line.

Hypothesis mutates valid specs at random (drops keys, adds unknown ones, swaps types, nests wrongly, puts
numbers out of range, names unknown methods and architectures) and calls the CLI's ``main`` in-process with
stdout/stderr captured. Never allowed: exit 1, a traceback, an exception escaping ``main``, several lines.
The pair probe is turned off in-process so accepted specs cost milliseconds; a few real subprocess runs of
``python -m study validate`` (probe on) cover the end-to-end path.
"""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import study.spec
from study.__main__ import main
from trainables import models

REPO = Path(__file__).resolve().parents[1]
CASES = 400


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a real (untrained) resnet20 teacher file for 10 classes, and room for spec files."""
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    torch.save({"model": models.create("resnet20", num_classes=10).state_dict()}, root / "resnet20.pt")
    return root


def bases(workspace: Path) -> list[dict[str, Any]]:
    """Valid specs covering the format's sections (search, grid, scheduler, given teacher files)."""
    storage = str(workspace / "studies")
    pair = {"teacher": "resnet20", "student": "resnet8"}
    return [
        {"name": "s", "storage_path": storage, "data": {"dataset": "digits"}, "teacher": {"train": True, "epochs": 1},
         "pairs": [pair], "methods": ["ce", "kd"], "config": {"epochs": 1}, "seeds": [0], "search": {"trials": 2}},
        {"name": "g", "storage_path": storage, "data": {"dataset": "digits", "root": None},
         "teacher": {"train": True, "epochs": 2, "seed": 1, "config": {"batch_size": 32}},
         "pairs": [pair, {"teacher": "resnet20", "student": "resnet14"}], "methods": ["kd", "ijckd"],
         "config": {"epochs": 2, "batch_size": 32}, "method_config": {"ijckd": {"connector_depth": 2}},
         "grid": {"kd": {"temperature": [2, 4]}, "ijckd": {"alpha+beta": [[1.0, 0.5], [2.0, 1.0]]}},
         "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}, "seeds": [0, 1],
         "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2, "max_failures": 0, "checkpoint_keep": 1,
         "metric": "val/top1", "mode": "max", "report": False, "ray": {"address": None, "num_cpus": 2}},
        {"name": "given", "storage_path": storage, "data": {"dataset": "synthetic"},
         "teacher": {"train": False, "checkpoints": {"resnet20": str(workspace / "resnet20.pt")}},
         "pairs": [pair], "methods": ["simkd", "kd"],
         "config": {"epochs": 1, "synthetic_classes": 10, "synthetic_size": 64},
         "search": {"trials": 3, "seed": 2, "defaults_first": False, "final": False,
                    "space": {"kd": {"temperature": {"low": 1.0, "high": 8.0}}, "simkd": {"lr": [0.01, 0.05]}}}},
    ]


NAMES = ["kdd", "resnet9", "teacher", "", " ", "Resnet20", "ResNet50", "resnet8x4", "imagenet", "cifar100",
         "synthetic", "val/top5", "test/top1", "asha", "max", "min", "online", "ce", "epochs", "a+b", "../x", "~"]
NUMBERS = [-1, 0, -0.5, 0.5, 1, 2, 10**12, 2**63, -(2**63), 1e308, float("inf"), float("-inf"), float("nan"), True,
           False]
leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.sampled_from(NAMES)
values = st.recursive(
    leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
REAL_KEYS = ["lr", "weight_decay", "val_fraction", "split_seed", "train_subset", "synthetic_size", "synthetic_classes",
             "synthetic_image_size", "batch_size", "eval_batch_size", "temperature", "kd_weight", "connector_depth",
             "connector_factor", "loss_combination", "amp", "device", "channels_last", "num_workers", "lr_milestones",
             "teacher_budget", "teacher_store", "augment", "export_model", "export_module", "fm_mode", "trials",
             "grace_period", "low", "high", "log", "checkpoints", "trajectories", "root", "dataset", "teacher",
             "student", "gpu", "cpu", "num_cpus", "address"]
keys = st.sampled_from(REAL_KEYS) | st.sampled_from(NAMES) | st.text(min_size=1, max_size=8)
OPS = ("drop", "unknown_key", "swap_type", "wrap_list", "wrap_dict", "unwrap", "number", "name", "duplicate")


def mutate(draw: st.DrawFn, root: Any) -> Any:
    """One random change at a random place of the tree ``root``; returns the new root."""
    box: dict[Any, Any] = {"root": root}
    holder: Any = box
    key: Any = "root"
    node = root
    depth = 0
    while isinstance(node, (dict, list)) and node and draw(st.integers(0, 19 if depth == 0 else 3)) > 0:
        depth += 1  # the root itself rarely, then each level deeper with probability 3/4
        key = draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
        holder, node = node, node[key]
    op = draw(st.sampled_from(OPS))
    if op == "drop":
        if holder is box:
            box["root"] = {}
        else:
            del holder[key]
    elif op == "unknown_key" and isinstance(node, dict):
        node[draw(keys)] = draw(values)
    elif op == "wrap_list":
        holder[key] = [node]
    elif op == "wrap_dict":
        holder[key] = {draw(keys): node}
    elif op == "unwrap" and isinstance(node, (dict, list)) and node:
        holder[key] = next(iter(node.values())) if isinstance(node, dict) else node[0]
    elif op == "number":
        holder[key] = draw(st.sampled_from(NUMBERS))
    elif op == "name":
        holder[key] = draw(st.sampled_from(NAMES))
    elif op == "duplicate" and isinstance(node, list) and node:
        node.append(copy.deepcopy(node[0]))
    else:  # swap_type, and ops that do not apply to this node
        holder[key] = draw(values)
    return box["root"]


@st.composite
def mutated_specs(draw: st.DrawFn, base_specs: list[dict[str, Any]]) -> Any:
    spec = copy.deepcopy(draw(st.sampled_from(base_specs)))
    for _ in range(draw(st.integers(1, 3))):
        spec = mutate(draw, spec)
    return spec


def run_validate(path: Path) -> tuple[Any, str, str]:
    """``main(['validate', path])`` in-process: (exit status or the escaped exception, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc: Any = main(["validate", str(path)])
        except BaseException as escaped:  # noqa: BLE001 - the property: nothing may escape
            rc = escaped
    return rc, out.getvalue(), err.getvalue()


def check_outcome(rc: Any, stdout: str, stderr: str, text: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc == 0:
        assert "is valid" in stdout and not lines, (stdout, stderr, text)
        return
    assert rc == 2, f"exit {rc!r}; stderr: {stderr}\nspec:\n{text}"
    assert len(lines) == 1 and lines[0].startswith("study: error: "), f"stderr: {stderr}\nspec:\n{text}"
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def no_probe():
    """Accepted specs must not cost a probe each here (the subprocess test below runs it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study.spec, "probe_pairs", lambda spec: None)
        yield


def test_bases_are_valid(workspace, no_probe):
    for i, spec in enumerate(bases(workspace)):
        path = workspace / f"base{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        rc, out, err = run_validate(path)
        assert rc == 0, err


def test_mutated_specs_are_accepted_or_one_line(workspace, no_probe):
    path = workspace / "mutant.yaml"
    seen = {"accepted": 0, "refused": 0}

    @settings(max_examples=CASES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated_specs(bases(workspace)))
    def prop(spec: Any) -> None:
        text = yaml.safe_dump(spec)
        path.write_text(text)
        rc, out, err = run_validate(path)
        check_outcome(rc, out, err, text)
        seen["accepted" if rc == 0 else "refused"] += 1

    prop()
    assert seen["refused"] > CASES // 4 and seen["accepted"] > 0, seen  # both outcomes are exercised


FOUND = {  # crashes the property found (each was a traceback before its fix); kept as plain regression cases
    "method-not-a-name": (0, lambda s: s.update(methods=[[], "kd"]), "'methods[0]' must be a string, got []"),
    "synthetic-classes-a-mapping": (2, lambda s: s["config"].update(synthetic_classes={}),
                                    "synthetic_classes must be an integer >= 1"),
    "lr-not-a-number": (0, lambda s: s["config"].update(lr="fast"), "lr must be a number"),
    "weight-decay-a-list": (0, lambda s: s["config"].update(weight_decay=[1]), "weight_decay must be a number"),
}


@pytest.mark.parametrize("case", list(FOUND))
def test_crashes_found_are_one_line(case, workspace, no_probe):
    index, change, fragment = FOUND[case]
    spec = copy.deepcopy(bases(workspace)[index])
    change(spec)
    path = workspace / f"found-{case}.yaml"
    path.write_text(yaml.safe_dump(spec))
    rc, out, err = run_validate(path)
    check_outcome(rc, out, err, case)
    assert rc == 2 and fragment in err, err


SUBPROCESS_CASES = {
    "valid": lambda b: b[0],
    "unknown-method": lambda b: {**b[0], "methods": ["kd", "kdd"]},
    "grid-row-not-a-list": lambda b: {**b[1], "grid": {"ijckd": {"alpha+beta": [1.0, 2.0]}}},
    "nested-pairs": lambda b: {**b[2], "pairs": [[{"teacher": "resnet20", "student": "resnet8"}]]},
    "nan-epochs": lambda b: {**b[0], "config": {"epochs": float("nan")}},
}


def test_real_cli_processes(workspace):
    """``python -m study validate`` as a user runs it (probe on): exit 0, or 2 with one line, no traceback."""
    procs = {}
    for name, make in SUBPROCESS_CASES.items():
        path = workspace / f"cli-{name}.yaml"
        path.write_text(yaml.safe_dump(make(bases(workspace))))
        procs[name] = subprocess.Popen([sys.executable, "-m", "study", "validate", str(path)], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        check_outcome(proc.returncode, stdout, stderr, name)
        assert (proc.returncode == 0) == (name == "valid"), (name, stderr)
