"""The resolved spec (what ``spec.yaml`` holds) of every preset and of a few edge-case specs is pinned.

The expected data in ``tests/spec_resolved.yaml`` was produced by the hand-written validator that the
pydantic models replaced (main 3d5a2fa), so this test says the typed layer changed no resolved value, no
default and no key order. Paths are written relative to a placeholder ``{TMP}`` (the test's working folder).
Fast: no probe, no Ray, no training.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import write_fake_cifar, write_tiny_imagenet

from study.spec import load_spec, validate

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "study" / "presets").glob("*.yaml"))
EXPECTED = Path(__file__).with_name("spec_resolved.yaml")

PAIR = [{"teacher": "resnet20", "student": "resnet8"}]
EDGE_CASES: dict[str, dict[str, Any]] = {
    "scalars-normalised": {
        "name": "scalars", "methods": "kd", "pairs": PAIR, "seeds": 3, "config": {"epochs": 2},
        "search": {"trials": 4, "space": {"kd": {"temperature": 4.0, "kd_weight": {"low": 0.5, "high": 2.0},
                                                "lr": [0.01, 0.05]}}},
        "scheduler": {"grace_period": 1}, "resources": {"cpu": 2}, "ray": {"num_cpus": 2},
        "storage_path": "s3://bucket/studies", "max_concurrent_trials": 2, "description": "edge",
    },
    "teacher-files": {
        "name": "files", "methods": ["kd", "ce"], "pairs": PAIR, "data": {"dataset": "digits", "root": "./d"},
        "teacher": {"train": False, "checkpoints": {"resnet20": "t.pt"}, "trajectories": {"resnet20": "traj"}},
        "search": {}, "storage_path": "./elsewhere", "metric": "val/loss", "mode": "min", "report": False,
    },
    "grid-and-nulls": {
        "name": "grid", "methods": ["kd", "ce"], "pairs": PAIR, "config": None, "method_config": None,
        "teacher": None, "search": None, "scheduler": None,
        "grid": {"kd": {"temperature+kd_weight": [[2, 1.0], [4, 0.5]]}, "ce": {"lr": [0.01, 0.05]}},
        "seeds": [0, 1], "max_failures": 0, "checkpoint_keep": 1,
    },
    "teacher-config": {
        "name": "tcfg", "methods": ["ce", "kd"], "pairs": PAIR, "config": {"epochs": 1, "batch_size": 32},
        "teacher": {"epochs": 2, "seed": 3, "config": {"batch_size": 16}}, "method_config": {"kd": {"temperature": 2}},
        "data": {"dataset": "synthetic"},
    },
    "pair-method-config": {
        "name": "pairs", "methods": ["ce", "dkd"], "config": {"epochs": 1},
        "pairs": [{"teacher": "resnet20", "student": "resnet8", "method_config": {"dkd": {"dkd_beta": 2}}},
                  {"teacher": "resnet20", "student": "resnet14", "method_config": None}],
        "method_config": {"dkd": {"dkd_beta": 6.0}}, "search": {"trials": 2, "space": {"dkd": {"temperature": 2.0}}},
    },
}


def _workdir(tmp: Path) -> None:
    """Folders and files the presets and edge cases point at (validation checks they exist)."""
    import torch

    from trainables.models import create

    write_fake_cifar(tmp / "data", "cifar100")  # validation opens the data and teacher files (study.preflight)
    write_fake_cifar(tmp / "data", "cifar10")
    write_tiny_imagenet(tmp / "data" / "imagenet")
    (tmp / "traj").mkdir()
    torch.save({"model": create("resnet20", 10).state_dict()}, tmp / "t.pt")


def _placeholder(value: Any, tmp: str) -> Any:
    if isinstance(value, dict):
        return {k: _placeholder(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholder(v, tmp) for v in value]
    if isinstance(value, str):
        return value.replace(tmp, "{TMP}")
    return value


def resolved_all(tmp: Path) -> dict[str, Any]:
    """``{case: resolved spec dict}`` for every preset and edge case, validated in ``tmp`` (the cwd)."""
    out: dict[str, Any] = {}
    for preset in PRESETS:
        out[f"preset:{preset.stem}"] = load_spec(preset, probe=False).data
    for case, raw in EDGE_CASES.items():
        out[case] = validate(raw, probe=False).data
    return {case: _placeholder(data, str(tmp)) for case, data in out.items()}


def test_resolved_specs_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _workdir(tmp_path)
    got = resolved_all(tmp_path)
    expected = yaml.safe_load(EXPECTED.read_text())
    assert sorted(got) == sorted(expected)
    for case in expected:
        assert got[case] == expected[case], case
        # key order too: spec.yaml is written with sort_keys=False
        assert yaml.safe_dump(got[case], sort_keys=False) == yaml.safe_dump(expected[case], sort_keys=False), case


if __name__ == "__main__":  # regenerate the expected data (only when a resolved value is meant to change)
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        _workdir(Path(tmp).resolve())
        data = resolved_all(Path(tmp).resolve())
    EXPECTED.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"wrote {EXPECTED} ({len(data)} cases)", file=sys.stderr)
