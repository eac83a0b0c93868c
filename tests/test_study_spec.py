"""Study specs: bad input is one line and exit status 2, before Ray starts or anything is written.

Fast: no Ray, no training (the CLI's ``main`` runs in-process; one subprocess checks Ray is never imported).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import DELETE, spec_with, write_tiny_imagenet

from study.__main__ import main
from study.spaces import Choice, Float, MethodSpace, knobs_for, parse_dist
from study.spec import SpecError, apply_sets, load_spec, validate
from trainables.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "study" / "presets").glob("*.yaml"))

BASE = {
    "name": "s",
    "data": {"dataset": "digits"},
    "teacher": {"train": True, "epochs": 1},
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "methods": ["ce", "kd"],
    "config": {"epochs": 1},
    "seeds": [0],
    "search": {"trials": 2},
}


def _with(**changes) -> dict:
    return spec_with(BASE, **changes)


_DELETE = DELETE

# (id, spec or raw text, extra CLI args, a fragment the one-line message must contain)
BAD_SPECS = [
    ("unknown-top-key", _with(serach={"trials": 2}), [], "did you mean 'search'"),
    ("unknown-method", _with(methods=["ce", "kdd"]), [], "unknown method 'kdd'"),
    ("teacher-as-method", _with(methods=["teacher"]), [], "not a study method"),
    ("unknown-student", _with(pairs=[{"teacher": "resnet20", "student": "resnet9"}]), [], "unknown student"),
    ("pair-missing-role", _with(pairs=[{"teacher": "resnet20"}]), [], "needs 'student'"),
    ("no-pairs", _with(pairs=[]), [], "'pairs' must be a non-empty list"),
    ("unknown-dataset", _with(data={"dataset": "cifar1000"}), [], "unknown dataset 'cifar1000'"),
    ("cifar-without-root", _with(data={"dataset": "cifar100"}), [], "needs data.root"),
    ("cifar-root-missing", _with(data={"dataset": "cifar100", "root": "/nonexistent/data"}), [], "cifar-100-python"),
    ("teacher-file-missing", _with(teacher={"train": False, "checkpoints": {"resnet20": "/nonexistent/t.pt"}}), [],
     "teacher checkpoint for 'resnet20' not found"),
    ("no-teacher-no-training", _with(teacher={"train": False}), [], "no checkpoint for teacher 'resnet20'"),
    ("bad-range-order", _with(search={"trials": 2, "space": {"kd": {"temperature": {"low": 8, "high": 1}}}}), [],
     "low (8) must be below high (1)"),
    ("bad-log-range", _with(search={"trials": 2, "space": {"kd": {"kd_weight": {"low": 0, "high": 1, "log": True}}}}),
     [], "log range needs low > 0"),
    ("knob-not-in-method", _with(search={"trials": 2, "space": {"ce": {"temperature": [2, 4]}}}), [],
     "not a search knob of 'ce'"),
    ("unknown-config-key", _with(config={"epoch": 1}), [], "did you mean 'epochs'"),
    ("method-config-foreign-key", _with(method_config={"ce": {"temperature": 4}}), [], "method 'ce' has no config key"),
    ("study-managed-key", _with(config={"epochs": 1, "student": "resnet14"}), [], "set by the study"),
    ("grid-and-search", _with(grid={"kd": {"temperature": [2, 4]}}), [], "exclude each other"),
    ("grid-key-unknown", _with(search=None, grid={"kd": {"temprature": [2, 4]}}), [], "did you mean 'temperature'"),
    ("test-metric", _with(metric="test/top1"), [], "never test"),
    ("empty-seeds", _with(seeds=[]), [], "'seeds' must be a non-empty list"),
    ("zero-cpu", _with(resources={"cpu": 0}), [], "'resources.cpu' must be > 0"),
    ("zero-epochs", _with(config={"epochs": 0}), [], "epochs must be a positive integer"),
    ("bad-value-by-method", _with(method_config={"kd": {"temperature": -1}}), [], "temperature must be > 0"),
    ("trials-zero", _with(search={"trials": 0}), [], "'search.trials' must be >= 1"),
    ("asha-grace-too-long", _with(scheduler={"type": "asha", "grace_period": 5}), [], "exceeds epochs"),
    ("unknown-scheduler-key", _with(scheduler={"type": "asha", "grace": 1}), [], "did you mean 'grace_period'"),
    ("pair-cannot-connect", _with(methods=["fitnet"], pairs=[{"teacher": "ResNet50", "student": "resnet8"}],
                                  method_config={"fitnet": {"hint_stage": 4}}), [],
     "cannot connect teacher 'ResNet50' to student 'resnet8'"),
    ("full-train-search", _with(config={"epochs": 1, "val_fraction": 0}), [],
     "method 'ce' trains with val_fraction 0 (no validation split), so the search would select on test"),
    ("full-train-asha", _with(search=None, config={"epochs": 2, "val_fraction": 0},
                              scheduler={"type": "asha", "grace_period": 1}), [],
     "so the scheduler (ASHA) would select"),
    ("broken-yaml", "name: [unclosed\n", [], "not valid YAML"),
    ("bad-set-syntax", BASE, ["--set", "search.trials"], "--set needs key=value"),
    ("set-unknown-key", BASE, ["--set", "search.trails=3"], "'search.trails' (did you mean 'trials'"),
]


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "studies"
    path.mkdir()
    return path


def _write(tmp_path: Path, spec) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("case", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_exits_2_with_one_line(case, tmp_path, storage, capsys):
    _, spec, extra, fragment = case
    path = _write(tmp_path, spec)
    rc = main(["run", str(path), "--storage-path", str(storage), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("study: error: ")
    assert fragment in lines[0], lines[0]
    assert list(storage.iterdir()) == []  # nothing written


def test_missing_spec_file_and_existing_study_dir_untouched(tmp_path, storage, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "spec file not found" in capsys.readouterr().err
    existing = storage / "s"
    existing.mkdir()
    (existing / "marker").write_text("keep me")
    path = _write(tmp_path, BASE)
    assert main(["run", str(path), "--storage-path", str(storage)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in existing.iterdir()) == ["marker"]
    assert main(["resume", str(tmp_path / "not-a-study")]) == 2


def test_bad_spec_never_imports_ray(tmp_path):
    path = _write(tmp_path, _with(methods=["kdd"]))
    code = (
        "import sys; from study.__main__ import main; rc = main(['run', sys.argv[1]]); "
        "print('RAY' if 'ray' in sys.modules else 'NORAY', rc)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["NORAY", "2"], out.stdout + out.stderr


def test_set_overrides_and_defaults(tmp_path):
    raw = apply_sets(BASE, ["search.trials=5", "seeds=[1, 2]", "pairs.0.student=resnet14", "ray.num_cpus=2"])
    assert raw["search"]["trials"] == 5 and raw["seeds"] == [1, 2] and raw["pairs"][0]["student"] == "resnet14"
    assert BASE["search"]["trials"] == 2  # the input is not modified
    spec = validate(raw, probe=False)
    assert spec.data["search"]["defaults_first"] is True and spec.data["resources"] == {"cpu": 1, "gpu": 0}
    assert spec.data["storage_path"].startswith("/")
    with pytest.raises(SpecError, match="not an index"):
        apply_sets(BASE, ["pairs.3.student=resnet8"])
    one_pair = validate(apply_sets(BASE, ["pairs.0.method_config.kd.temperature=2"]), probe=False)
    assert one_pair.pair_config("kd", one_pair.pairs[0])["temperature"] == 2


def test_full_training_set_grid_and_fixed_configs_validate():
    """val_fraction 0 (the papers' protocol) is allowed where nothing is selected on validation."""
    fixed = validate(_with(search=None, config={"epochs": 1, "val_fraction": 0}), probe=False)
    assert fixed.data["config"]["val_fraction"] == 0
    validate(_with(search=None, config={"epochs": 1, "val_fraction": 0}, grid={"kd": {"temperature": [2, 4]}}),
             probe=False)


def test_search_space_fixed_value_and_overrides():
    raw = _with(search={"trials": 2, "space": {"kd": {"temperature": 4.0, "kd_weight": {"low": 0.5, "high": 2.0}}}})
    spec = validate(raw, probe=False)
    assert spec.data["method_config"]["kd"]["temperature"] == 4.0  # a plain value fixes the knob
    space = spec.method_space("kd", spec.pairs[0])
    assert "temperature" not in space.active_knobs()
    assert space.overrides["kd_weight"] == Float(0.5, 2.0)
    assert space.default_point() == {"lr": 0.05, "weight_decay": 5e-4, "kd_weight": 0.9, "ce_weight": 0.1}


def _asked(space: MethodSpace, forced: dict) -> set[str]:
    """Run a space on a real Optuna trial whose values for ``forced`` are enqueued; return what it suggested."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(forced)
    trial = study.ask()
    space(trial)
    return set(trial.params)


def test_conditional_knobs_follow_loss_combination():
    keys = frozenset({"lr", "weight_decay", "alpha_ce", "alpha", "beta", "loss_combination", "connector_depth",
                      "connector_factor"})
    base = {"loss_combination": "sr", "connector_depth": 1, "alpha": 1.0, "beta": 1.0, "alpha_ce": 1.0,
            "lr": 0.05, "weight_decay": 5e-4, "connector_factor": 2}
    space = MethodSpace("ijckd", base, keys)
    for combo, expected in (("sr", {"alpha"}), ("fm", {"beta"}), ("sr+fm", {"alpha", "beta"})):
        asked = _asked(space, {"loss_combination": combo, "connector_depth": 1})
        assert {"alpha", "beta"} & asked == expected
        assert "connector_factor" not in asked
    assert "connector_factor" in _asked(space, {"connector_depth": 3})
    # a method without the key never gets it suggested (knob tables may name keys a method lacks)
    kd_like = MethodSpace("kd", {"lr": 0.05}, frozenset({"lr", "weight_decay", "temperature"}))
    assert _asked(kd_like, {}) == {"lr", "weight_decay", "temperature"}
    fixed = MethodSpace("kd", {"lr": 0.05}, frozenset({"lr", "weight_decay", "temperature"}), frozenset({"lr"}))
    assert _asked(fixed, {}) == {"weight_decay", "temperature"}


def test_parse_dist():
    assert parse_dist([1, 2], None) == Choice((1, 2))
    assert parse_dist(3.0, None) is None
    with pytest.raises(ValueError, match="give a list"):
        parse_dist({"low": 1, "high": 2}, knobs_for("ijckd")["connector_depth"].dist)


def _preset_methods(path: Path) -> list[str]:
    return list(yaml.safe_load(path.read_text()).get("methods", []))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_validate(preset, tmp_path, fake_cifar):
    assert set(_preset_methods(preset)) <= set(METHODS), "a preset names a method that is not registered"
    data = yaml.safe_load(preset.read_text())
    sets = []
    dataset = data.get("data", {}).get("dataset", "digits")
    if dataset in ("cifar100", "cifar10"):
        root = tmp_path / "data"
        fake_cifar(root, dataset)  # validation opens the data files (study/preflight.py)
        sets.append(f"data.root={root}")
    if dataset == "imagenet":
        sets.append(f"data.root={write_tiny_imagenet(tmp_path / 'imagenet')}")
    spec = load_spec(preset, sets)
    assert spec.methods


def test_table4_preset_has_the_papers_imagenet_recipe(tmp_path):
    root = write_tiny_imagenet(tmp_path / "imagenet")
    spec = load_spec(REPO / "study" / "presets" / "table4_imagenet.yaml", [f"data.root={root}"])
    data = spec.data
    assert data["data"]["dataset"] == "imagenet"
    assert [(p["teacher"], p["student"]) for p in data["pairs"]] == [("resnet34", "resnet18"),
                                                                     ("resnet50", "mobilenetv1")]
    assert {k: data["config"][k] for k in ("batch_size", "lr", "weight_decay", "epochs", "lr_milestones")} == {
        "batch_size": 512, "lr": 0.2, "weight_decay": 1e-4, "epochs": 120, "lr_milestones": [30, 60, 90]}
    assert [METHODS[m].label for m in data["methods"]] == ["student", "KD", "AT", "CRD", "WSLD", "DKD", "SRRL",
                                                           "IJCKD"]  # the paper's Table-4 rows
    assert data["method_config"]["ijckd"] == {"loss_combination": "sr+fm", "connector_depth": 3}
    assert data["method_config"]["wsld"] == {"temperature": 2.0, "wsld_alpha": 2.5}  # the authors' ImageNet code
    # mdistiller's ImageNet DKD files: T 1, warm-up 1, beta 0.5 (r34 -> r18) and 2 (r50 -> mv1)
    imagenet_dkd = {"temperature": 1.0, "warmup_epochs": 1}
    assert [spec.method_settings("dkd", p) for p in spec.pairs] == [{**imagenet_dkd, "dkd_beta": 0.5},
                                                                    {**imagenet_dkd, "dkd_beta": 2.0}]


def test_table1_preset_covers_the_papers_twelve_rows_on_its_eight_pairs(tmp_path, fake_cifar):
    """table1_cifar100 runs the paper's twelve rows (and ``ce``), in its order, on all eight pairs: the
    validation probe builds every method, OFD included, on every pair and takes a step."""
    root = tmp_path / "data"
    fake_cifar(root, "cifar100")
    spec = load_spec(REPO / "study" / "presets" / "table1_cifar100.yaml", [f"data.root={root}"])
    paper = pd.read_csv(REPO / "analysis" / "paper_tables" / "ijckd_table1_cifar100.csv")
    rows = [r for r in dict.fromkeys(paper["method"]) if r not in ("teacher", "student_ce")]
    assert spec.data["methods"][0] == "ce" and len(rows) == 12
    assert [METHODS[m].label for m in spec.data["methods"][1:]] == rows  # every row, in the paper's order
    pairs = {(p["teacher"], p["student"]) for p in spec.data["pairs"]}
    assert pairs == set(zip(paper["teacher"], paper["student"])) and len(pairs) == 8
    with pytest.raises(SpecError, match="'ofd' cannot connect.*teacher 'ShuffleV1' does not have; teachers with them"):
        load_spec(REPO / "study" / "presets" / "table1_cifar100.yaml",
                  [f"data.root={root}", "methods=[ofd]", "method_config={}",
                   "pairs=[{teacher: ShuffleV1, student: resnet20}]"])
    # DKD's beta per pair: mdistiller's configs/cifar100/dkd/ files (resnet110 -> resnet20 has none: 2, as both
    # its nearest pairs), the declared default 8 elsewhere
    betas = {(p["teacher"], p["student"]): spec.pair_config("dkd", p).get("dkd_beta", METHODS["dkd"].defaults[
        "dkd_beta"]) for p in spec.pairs}
    assert betas == {("wrn_40_2", "wrn_40_1"): 6.0, ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet20"): 2.0,
                     ("resnet110", "resnet32"): 2.0, ("resnet32x4", "resnet8x4"): 8.0, ("resnet32x4", "ShuffleV1"): 8.0,
                     ("resnet32x4", "ShuffleV2"): 8.0, ("wrn_40_2", "ShuffleV1"): 8.0}
    assert all(set(spec.method_settings(m, p)) <= {"connector_depth"} for m in spec.methods if m != "dkd"
               for p in spec.pairs)  # no other method's settings differ per pair
