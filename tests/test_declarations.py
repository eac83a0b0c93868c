"""Method declarations: a method defined in one file outside ``trainables/methods/`` gets validation, a real
Optuna space, its README rows and its report label from its declaration alone; the README tables cannot drift.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from study.spaces import MethodSpace
from tests.plugins import toy_method  # noqa: F401 - registers "toy_smooth"
from trainables import docs
from trainables.config import allowed_keys, resolve_config
from trainables.errors import ConfigError
from trainables.methods import METHODS, Method, register_method
from trainables.params import FIXED, DeclarationError, Float, Param

ROOT = Path(__file__).resolve().parents[1]
TOY = {"method": "toy_smooth", "dataset": "digits", "student": "resnet8", "epochs": 1, "batch_size": 32,
       "train_subset": 96, "seed": 0, "bound_metrics": False}


def test_plugin_config_is_validated_from_its_declaration():
    cfg = resolve_config({**TOY, "smoothing": 0})
    assert cfg["smoothing"] == 0.0 and isinstance(cfg["smoothing"], float)
    assert cfg["smoothing_schedule"] == "constant" and cfg["smoothing_floor"] == 0.0
    for bad, line in (
        ({"smoothing": 0.7}, "smoothing must be >= 0 and <= 0.5, got 0.7"),
        ({"smoothing": "lots"}, "smoothing must be a number >= 0 and <= 0.5, got 'lots'"),
        ({"smoothing_schedule": "decy"}, "smoothing_schedule must be one of constant, decay; got 'decy' "
                                         "(did you mean 'decay'?)"),
        ({"smoothng": 0.1}, "unknown config key 'smoothng' for method 'toy_smooth' (did you mean 'smoothing'?)"),
    ):
        with pytest.raises(ConfigError) as err:
            resolve_config({**TOY, **bad})
        assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_plugin_space_runs_real_optuna_trials():
    cls = METHODS["toy_smooth"]
    base = resolve_config(TOY)
    space = MethodSpace("toy_smooth", base, frozenset(allowed_keys(cls.defaults)), frozenset({"weight_decay"}))
    space = pickle.loads(pickle.dumps(space))  # the searcher is pickled into Tune's experiment checkpoint
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: space(trial) or trial.params.get("smoothing", 0.0), n_trials=12)
    schedules = set()
    for trial in study.trials:
        p = trial.params
        assert {"lr", "smoothing", "smoothing_schedule"} <= set(p) and "weight_decay" not in p
        assert 0.0 <= p["smoothing"] <= 0.3 and 0.01 <= p["lr"] <= 0.2
        assert ("smoothing_floor" in p) == (p["smoothing_schedule"] == "decay")  # the conditional knob
        schedules.add(p["smoothing_schedule"])
    assert schedules == {"constant", "decay"}
    assert space.default_point() == {"lr": 0.05, "smoothing": 0.1, "smoothing_schedule": "constant"}


def test_a_method_without_a_declared_space_is_refused_at_registration():
    class NoSpace(Method):
        name, label = "no_space", "NS"
        params = (Param("gamma", float, 1.0, ge=0),)

    with pytest.raises(DeclarationError, match="declares no search space.*search_space = FIXED"):
        register_method(NoSpace)

    class Contradicts(NoSpace):
        params = (Param("gamma", float, 1.0, ge=0, search=Float(0.0, 2.0)),)
        search_space = FIXED

    with pytest.raises(DeclarationError, match="says search_space = FIXED but searches gamma"):
        register_method(Contradicts)

    class OutOfRange(NoSpace):
        params = (Param("gamma", float, 1.0, gt=0, search=Float(0.0, 2.0)),)

    with pytest.raises(DeclarationError, match="proposes 0.0, outside > 0"):
        register_method(OutOfRange)

    class Unlabelled(NoSpace):
        label = ""
        search_space = FIXED

    with pytest.raises(DeclarationError, match="needs a 'label'"):
        register_method(Unlabelled)
    assert "no_space" not in METHODS


def test_plugin_gets_its_rows_in_the_generated_readme_tables(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    readme.write_text(docs.render(readme.read_text(), docs.generate(METHODS)))
    text = readme.read_text()
    assert "| `toy_smooth` | LS | `smoothing` (0.1), `smoothing_schedule` (constant), `smoothing_floor` (0.0) |" in text
    assert ("`smoothing_floor` float in [0.0, 0.05] (only when smoothing_schedule = decay)") in text
    rows = [line for line in text.splitlines() if line.startswith("| `") and "| student |" in line or "| LS |" in line]
    assert [r.split("|")[1].strip() for r in rows][:2] == ["`ce`", "`toy_smooth`"]  # order 10, then 15


def test_docs_check_passes_on_the_readme_and_fails_on_a_hand_edit(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "trainables", "docs", "--check"], cwd=ROOT, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    edited = tmp_path / "README.md"
    edited.write_text((ROOT / "README.md").read_text().replace("| `kd` | KD |", "| `kd` | Hinton KD |", 1))
    assert docs.main(["--check", "--readme", str(edited)]) == 1
    assert docs.differing(edited.read_text(), docs.generate()) == ["methods"]
    assert docs.main(["--readme", str(edited)]) == 0  # regenerating repairs it
    assert docs.main(["--check", "--readme", str(edited)]) == 0
    assert edited.read_text() == (ROOT / "README.md").read_text()


def test_report_shows_the_plugin_label_from_study_json(tmp_path):
    from analysis.report import build_report
    from study.runner import init_study
    from study.spec import validate
    from trainables.loop import train
    from trainables.reporting import RunDirReporter

    spec = validate({"name": "toy", "data": {"dataset": "digits"}, "teacher": {"train": True, "epochs": 1},
                     "pairs": [{"teacher": "resnet20", "student": "resnet8"}], "methods": ["toy_smooth"],
                     "config": {"epochs": 1, "batch_size": 32, "train_subset": 96}}, probe=False)
    study_dir = tmp_path / "toy"
    init_study(spec, study_dir)
    manifest = json.loads((study_dir / "study.json").read_text())
    assert manifest["methods"]["toy_smooth"] == {"label": "LS", "order": 15, "source": "Szegedy et al., CVPR 2016"}
    trial_dir = study_dir / "grid-toy_smooth" / "toy_smooth_00000_0_seed=0"
    config = {**spec.pair_config("toy_smooth", spec.pairs[0]), "seed": 0, "bound_metrics": False}
    config.pop("pair")
    reporter = RunDirReporter(trial_dir)
    train(config, reporter=reporter, workdir=trial_dir)
    (trial_dir / "params.json").write_text(json.dumps(config))
    (trial_dir / "result.json").write_text("".join(json.dumps({**m, "trial_id": "00000"}) + "\n"
                                                   for m in reporter.history))
    report = build_report(study_dir)
    md = report.with_suffix(".md").read_text()
    assert "Methods: LS (toy_smooth)" in md
