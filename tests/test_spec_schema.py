"""The typed spec layer (``study.spec_schema``): each bad value is one exact line, good values keep their type.

Fast: ``validate(..., probe=False)`` only, no CLI, no Ray. The CLI's exit status and "nothing written" are
pinned by tests/test_study_spec.py; this file pins the wording of the pydantic-backed messages.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import spec_with

from study.spec import SpecError, validate
from study.spec_schema import STUDY_MANAGED, StudySpec, key_path
from trainables.config import allowed_keys
from trainables.data import DATASETS, dataset_info
from trainables.methods import METHODS
from trainables.models import list_models

BASE = {
    "name": "s",
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "methods": ["ce", "kd"],
    "config": {"epochs": 1},
}


def _with(**changes) -> dict:
    return spec_with(BASE, **changes)


def _pair_config(method_config: dict, **changes) -> dict:
    """BASE with the first pair's own ``method_config``."""
    return _with(pairs=[{**BASE["pairs"][0], "method_config": method_config}], **changes)


KD_SETTABLE = allowed_keys(METHODS["kd"].defaults) - set(STUDY_MANAGED)
"""What a ``method_config.kd`` may set: the method's keys but those the study sets itself."""


LINES = [
    (_with(name="a b"), "'name' must be letters, digits, '_', '-' or '.', got 'a b'"),
    (_with(storage_path=""), "'storage_path' must be a folder or URI, got ''"),
    (_with(data=[1]), "'data' must be a mapping, got list [1]"),
    (_with(data__rot="x"), "unknown spec key 'data.rot' (did you mean 'root'?); allowed: dataset, root"),
    (_with(data__dataset="cifar1000"), "unknown dataset 'cifar1000' in data.dataset (did you mean 'cifar100'?); "
                                       "allowed: cifar10, cifar100, digits, imagenet, synthetic"),
    (_with(teacher__train=1), "'teacher.train' must be true or false, got 1"),
    (_with(teacher__epochs=2.0), "'teacher.epochs' must be an integer, got 2.0"),
    (_with(teacher__epochs=0), "'teacher.epochs' must be >= 1, got 0"),
    (_with(teacher__config={"epochs": 3}),
     "'teacher.config.epochs' is set by the study (use teacher.epochs / teacher.seed / data)"),
    (_with(teacher={"checkpoints": {"resnet20": "/nonexistent/t.pt"}}),
     "teacher checkpoint for 'resnet20' not found: /nonexistent/t.pt (teacher.checkpoints.resnet20)"),
    (_with(teacher={"trajectories": {"resnet20": "/nonexistent/traj"}}),
     "teacher trajectory folder for 'resnet20' not found: /nonexistent/traj"),
    (_with(teacher={"checkpoints": {"resnet9": "/x"}}), "unknown architecture 'resnet9' in teacher.checkpoints "
     "(did you mean 'resnet8'?); allowed: " + ", ".join(sorted(list_models()))),
    (_with(pairs=["x"]), "'pairs[0]' must be a mapping, got str 'x'"),
    (_with(pairs=[{"teacher": "resnet20"}]), "pairs[0] needs 'student' (an architecture)"),
    (_with(pairs=[{"teacher": "resnet20", "student": "resnet8", "x": 1}]),
     "unknown spec key 'pairs[0].x'; allowed: method_config, student, teacher"),
    (_with(pairs=BASE["pairs"] * 2), "'pairs' lists teacher 'resnet20' with student 'resnet8' twice (pairs[1])"),
    (_with(methods=["ce", "ce"]), "'methods' lists a method twice: ['ce', 'ce']"),
    (_with(method_config={"ijckd": {}}), "unknown spec key 'method_config.ijckd'; allowed: ce, kd"),
    (_with(method_config={"kd": 3}), "'method_config.kd' must be a mapping, got int 3"),
    (_with(method_config={"kd": {"temprature": 2}}), "method 'kd' has no config key 'temprature' "
     f"(method_config.kd) (did you mean 'temperature'?); allowed: {', '.join(sorted(KD_SETTABLE))}"),
    (_pair_config({"dkd": {"dkd_beta": 2.0}}), "unknown spec key 'pairs[0].method_config.dkd' (did you mean "
     "'kd'?); allowed: ce, kd"),
    (_pair_config({"kd": {"dkd_beta": 2.0}}), "method 'kd' has no config key 'dkd_beta' (pairs[0].method_config.kd)"
     f"; allowed: {', '.join(sorted(KD_SETTABLE))}"),
    (_pair_config({"kd": {"teacher": "resnet8"}}),
     "'pairs[0].method_config.kd.teacher' is set by the study; remove it"),
    (_pair_config({"kd": 3}), "'pairs[0].method_config.kd' must be a mapping, got int 3"),
    (_pair_config({"kd": {"temperature": -1.0}}), "method 'kd' on resnet20-resnet8: temperature must be > 0, got -1.0"),
    (_pair_config({"kd": {"temperature": 2.0}}, grid={"kd": {"kd_weight+temperature": [[1.0, 2.0], [0.5, 4.0]]}}),
     "'pairs[0].method_config.kd.temperature' is also varied by grid.kd: a key is either fixed per pair or a grid "
     "key; remove one"),
    (_with(seeds=[0, 0]), "'seeds' lists a seed twice: [0, 0]"),
    (_with(seeds=[-1]), "'seeds[0]' must be >= 0, got -1"),
    (_with(seeds=None), "'seeds' must be a non-empty list of integers, got None"),
    (_with(search={"trials": True}), "'search.trials' must be an integer, got True"),
    (_with(search={"final": "yes"}), "'search.final' must be true or false, got 'yes'"),
    (_with(grid={"kd": {"temperature": [2, 2]}}), "'grid.kd.temperature' lists a value twice: [2, 2]"),
    (_with(grid={"kd": {"temperature": 3}}), "'grid.kd.temperature' must be a non-empty list of values, got 3"),
    (_with(grid={"kd": {"temperature+kd_weight": [[1, 2, 3]]}}),
     "'grid.kd.temperature+kd_weight': each row must list 2 values (temperature, kd_weight), got [1, 2, 3]"),
    (_with(scheduler={"type": "hyperband"}),
     "'scheduler.type' must be 'asha' (or leave scheduler out), got 'hyperband'"),
    (_with(scheduler={"reduction_factor": 1}), "'scheduler.reduction_factor' must be > 1, got 1"),
    (_with(resources={"cpu": True}), "'resources.cpu' must be a number, got True"),
    (_with(resources={"cpu": 0}), "'resources.cpu' must be > 0, got 0"),
    (_with(resources={"gpu": -1}), "'resources.gpu' must be >= 0, got -1"),
    (_with(resources={"gpu": 1.5}), "'resources.gpu' must be a fraction up to 1 or a whole number, got 1.5"),
    (_with(max_concurrent_trials=0), "'max_concurrent_trials' must be >= 1, got 0"),
    (_with(mode="maximum"), "'mode' must be max or min, got 'maximum'"),
    (_with(ray={"adress": "x"}), "unknown spec key 'ray.adress' (did you mean 'address'?); allowed: address, num_cpus"),
    (_with(ray={"num_cpus": 0}), "'ray.num_cpus' must be >= 1, got 0"),
    (_with(serach={"trials": 2}, search={"trials": 0}),  # the typo is reported, not what follows from it
     "unknown spec key 'serach' (did you mean 'search'?); allowed: " + ", ".join(sorted(StudySpec.model_fields))),
]


@pytest.mark.parametrize("raw, line", LINES, ids=[line[:40] for _, line in LINES])
def test_bad_value_is_one_exact_line(raw, line):
    with pytest.raises(SpecError) as err:
        validate(raw, probe=False)
    assert str(err.value) == line


def test_numbers_keep_their_type_and_one_name_is_a_list():
    spec = validate(_with(resources={"cpu": 2, "gpu": 0.5}, seeds=3, methods="kd", scheduler={"reduction_factor": 3}),
                    probe=False)
    assert spec.data["resources"] == {"cpu": 2, "gpu": 0.5}
    assert type(spec.data["resources"]["cpu"]) is int and type(spec.data["scheduler"]["reduction_factor"]) is int
    assert spec.data["seeds"] == [3] and spec.data["methods"] == ["kd"]


def test_resolved_spec_validates_to_itself(tmp_path, monkeypatch):
    """``resume`` validates the stored spec.yaml again: the resolved form is a fixed point."""
    monkeypatch.chdir(tmp_path)
    first = validate(_with(search={"space": {"kd": {"temperature": 4.0, "kd_weight": [0.5, 1.0]}}},
                           data={"dataset": "digits", "root": "./here"}), probe=False)
    again = validate(yaml.safe_load(first.dump()), probe=False)
    assert again.dump() == first.dump()


def test_key_path():
    assert key_path(("pairs", 0, "student")) == "pairs[0].student"
    assert key_path(("teacher", "checkpoints", "resnet9", "[key]")) == "teacher.checkpoints"
    assert key_path(("seeds", 2)) == "seeds[2]"


def test_data_checks_read_the_declaration(tmp_path, fake_cifar):
    """The spec's data-root check follows the data set's declared folders (here: ImageNet's two)."""
    info = dataset_info("imagenet")
    assert info.needs_root and info.folders == ("train", "val") and info.shape({}) == (1000, 224)
    (tmp_path / "train").mkdir()
    with pytest.raises(SpecError, match=f"expected {tmp_path / 'val'}$"):
        validate(_with(data={"dataset": "imagenet", "root": str(tmp_path)}), probe=False)
    assert dataset_info("synthetic").shape({"synthetic_classes": 7}) == (7, 32)
    assert {name for name, d in DATASETS.items() if d.needs_root} == {"cifar10", "cifar100", "imagenet"}
    for name in ("cifar10", "cifar100"):
        with pytest.raises(SpecError, match="needs data.root"):
            validate(_with(data={"dataset": name}), probe=False)
        fake_cifar(tmp_path, name)  # validation reads the files, not only the declared folder
        assert validate(_with(data={"dataset": name, "root": str(tmp_path)}), probe=False).data["data"]["root"] == str(
            Path(tmp_path).absolute()
        )


def test_a_pairs_method_config_is_over_the_top_level_for_its_trials_only():
    """Pair A's own ``dkd_beta`` reaches A's trial config and fixes it in A's search; pair B keeps the top level."""
    pair_a = {"teacher": "resnet20", "student": "resnet8", "method_config": {"dkd": {"dkd_beta": 2.0}}}
    pair_b = {"teacher": "resnet20", "student": "resnet14"}
    spec = validate(_with(methods=["ce", "dkd"], pairs=[pair_a, pair_b], search={"trials": 2},
                          method_config={"dkd": {"dkd_beta": 6.0, "temperature": 2.0}}), probe=False)
    a, b = spec.pairs
    assert spec.pair_config("dkd", a)["dkd_beta"] == 2.0 and spec.pair_config("dkd", b)["dkd_beta"] == 6.0
    assert spec.pair_config("dkd", a)["temperature"] == spec.pair_config("dkd", b)["temperature"] == 2.0
    assert spec.method_settings("dkd", pair_b) == {"dkd_beta": 6.0, "temperature": 2.0}
    assert "dkd_beta" not in spec.pair_config("ce", a)
    # a pair level alone: it fixes the knob for that pair's search only, and the resolved pair keeps it
    alone = validate(_with(methods=["dkd"], pairs=[pair_a, pair_b], search={"trials": 2}), probe=False)
    knobs = {label: set(alone.method_space("dkd", p).active_knobs()) for label, p in zip("ab", alone.pairs)}
    assert "dkd_beta" not in knobs["a"] and "dkd_beta" in knobs["b"]
    assert alone.method_space("dkd", pair_a).base["dkd_beta"] == 2.0
    assert alone.method_space("dkd", pair_b).default_point()["dkd_beta"] == 8.0  # the declared default
    assert alone.data["pairs"] == [pair_a, pair_b]  # no empty method_config written for b
    assert validate(yaml.safe_load(alone.dump()), probe=False).dump() == alone.dump()
