"""The softmax-regression family (srrl, simkd, ijckd, teacher_head): losses, learning, frozen head, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.config import resolve_config
from trainables.data import build_data
from trainables.errors import ConfigError
from trainables.export import EXPORT_FORMAT, load_exported
from trainables.loop import build_trial, restore, train, train_one_epoch
from trainables.methods.softmax_regression import EXPORT_DIR, EXPORT_FILE, EXPORT_MODULE_FILE, ijckd_loss, mse
from trainables.reporting import RunDirReporter

# The worked IJCKD example of shared/reference/loss_vectors.md.
LOGITS_S = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
LOGITS_T = torch.tensor([[1.5, 1.0, -0.5], [0.0, 0.0, 3.0]])
TARGET = torch.tensor([1, 2])


def test_ijckd_loss_matches_the_worked_value():
    assert F.cross_entropy(LOGITS_S, TARGET).item() == pytest.approx(0.324459, abs=1e-5)
    assert mse(LOGITS_S, LOGITS_T).item() == pytest.approx(0.625, abs=1e-5)  # mean over batch x classes
    assert ijckd_loss(LOGITS_S, LOGITS_T, TARGET).item() == pytest.approx(0.949459, abs=1e-5)
    assert mse(LOGITS_S, LOGITS_T, "batchmean").item() == pytest.approx(1.875, abs=1e-5)  # sum over classes
    assert ijckd_loss(LOGITS_S, LOGITS_T, TARGET, alpha_ce=0.5, alpha=2.0).item() == pytest.approx(
        0.5 * 0.324459 + 2 * 0.625, abs=1e-5
    )


def test_ijckd_method_terms_match_the_worked_value(student_cfg, tmp_path):
    method = build_trial({**student_cfg, "method": "ijckd"}, tmp_path).method
    terms = method.loss_terms(LOGITS_S, LOGITS_T, TARGET)
    assert set(terms) == {"ce", "sr"}
    assert sum(terms.values()).item() == pytest.approx(0.949459, abs=1e-5)


RUNS = {
    "ijckd-sr-d1": {"method": "ijckd", "loss_combination": "sr", "connector_depth": 1},
    "ijckd-fm-d2": {"method": "ijckd", "loss_combination": "fm", "connector_depth": 2},
    "ijckd-srfm-d3-pooled": {"method": "ijckd", "loss_combination": "sr+fm", "connector_depth": 3, "fm_mode": "pooled"},
    "srrl": {"method": "srrl"},
    "simkd": {"method": "simkd"},  # connector_depth 3 by default
    "teacher_head": {"method": "teacher_head"},
}
TERMS = {
    "ijckd-sr-d1": {"ce", "sr"},
    "ijckd-fm-d2": {"ce", "fm"},
    "ijckd-srfm-d3-pooled": {"ce", "sr", "fm"},
    "srrl": {"ce", "sr", "fm"},
    "simkd": {"fm"},
    "teacher_head": {"ce"},
}
EPOCHS = 2


@pytest.fixture(scope="module")
def runs(digits_teacher, tmp_path_factory):
    """Each configuration of RUNS trained once for two epochs on digits against the session teacher."""
    out = {}
    for name, extra in RUNS.items():
        workdir = tmp_path_factory.mktemp(name)
        cfg = {
            "dataset": "digits", "teacher": digits_teacher["arch"], "teacher_checkpoint": digits_teacher["checkpoint"],
            "student": "resnet8", "epochs": EPOCHS, "batch_size": 32, "seed": 0, **extra,
        }
        reporter = RunDirReporter(workdir)
        final = train(cfg, reporter=reporter, workdir=workdir)
        out[name] = {"cfg": cfg, "final": final, "history": reporter.history, "workdir": workdir, "reporter": reporter}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_family_learns_well_above_chance(runs, name):
    final = runs[name]["final"]
    assert final["val/top1"] >= 25.0 and final["test/top1"] >= 25.0, final  # chance is 10 %; 2 epochs
    assert {k[len("train/loss_"):] for k in final if k.startswith("train/loss_")} == TERMS[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_bound_terms_hold_every_epoch(runs, name):
    history = runs[name]["history"]
    assert len(history) == EPOCHS
    for m in history:
        assert all(math.isfinite(m[k]) for k in ("bound/delta1", "bound/delta2", "bound/rhs"))
        assert m["bound/student_err"] <= m["bound/rhs"] + 1e-9
        assert m["bound/student_err"] == pytest.approx(100.0 - m["val/top1"], abs=1e-9)  # same path as val/top1
        assert m["bound/rhs"] == pytest.approx(m["bound/teacher_err"] + m["bound/delta1"] + m["bound/delta2"])
        if name != "srrl":
            assert m["bound/delta1"] == 0.0  # the student's head is the teacher's head
    assert history[0]["bound/teacher_err"] == history[-1]["bound/teacher_err"]  # the teacher never changes
    if name == "srrl":
        assert history[-1]["bound/delta1"] > 0.0  # own head vs teacher head: they can disagree


@pytest.mark.slow
def test_teacher_head_never_runs_the_teacher_in_training(runs):
    n_train = build_data(runs["teacher_head"]["cfg"]).train.num_examples
    assert runs["teacher_head"]["final"]["teacher_calls"] == 0  # bound diagnostics are not counted
    assert runs["ijckd-sr-d1"]["final"]["teacher_calls"] == EPOCHS * n_train


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_export_predicts_exactly_as_evaluation(runs, name):
    run = runs[name]
    path = run["workdir"] / EXPORT_DIR / EXPORT_FILE
    exported = load_exported(path)  # weights_only=True inside; nothing else is ever needed
    assert not exported.training and not any(p.requires_grad for p in exported.parameters())
    assert not (path.parent / EXPORT_MODULE_FILE).exists()  # the pickled module only on request
    trial = build_trial(run["cfg"], run["workdir"])
    restore(trial, run["reporter"].checkpoint_dir)
    method = trial.method.eval()
    correct, n = 0, 0
    with torch.inference_mode():
        for batch in trial.data.val.batches(256, shuffle=False, augment=False):
            got = exported(batch.x)
            expected = method.predict(batch.x)
            assert torch.equal(got, expected)  # bitwise: the same operations on the same weights
            correct += int((got.argmax(1) == batch.y).sum())
            n += int(batch.y.numel())
    assert 100.0 * correct / n == pytest.approx(run["final"]["val/top1"], abs=1e-9)
    # no teacher trunk inside: the student's trunk + connector + one linear layer at most
    n_exported = sum(p.numel() for p in exported.parameters())
    n_student = sum(p.numel() for p in method.student.parameters())
    n_connector = sum(p.numel() for p in method.connector.parameters()) if method.connector is not None else 0
    teacher_fc = trial.teacher.classifier()
    assert n_exported <= n_student + n_connector + teacher_fc.weight.numel() + teacher_fc.bias.numel()
    if name == "srrl":
        assert n_exported == n_student  # SRRL deploys its own student only


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ijckd-srfm-d3-pooled", "srrl", "teacher_head"])
def test_export_file_is_plain_weights_and_description(runs, name):
    """A plain ``torch.load(weights_only=True)`` reads the file: tensors, strings, numbers, lists, nothing else."""
    path = runs[name]["workdir"] / EXPORT_DIR / EXPORT_FILE
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == EXPORT_FORMAT and set(obj) == {"format", "version", "module", "state_dict"}
    assert all(isinstance(v, torch.Tensor) for v in obj["state_dict"].values())

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(obj["module"]), obj["module"]
    module = obj["module"]
    if name == "srrl":
        assert {k: module[k] for k in ("kind", "arch", "num_classes")} == {"kind": "student", "arch": "resnet8",
                                                                           "num_classes": 10}
    else:
        assert module["kind"] == "deployed" and module["student"] == "resnet8" and module["num_classes"] == 10
        assert module["head"] == {"in_features": 64, "out_features": 10}  # the resnet20 teacher's classifier
    if name == "ijckd-srfm-d3-pooled":
        assert module["connector"] == {"in_channels": 64, "out_channels": 64, "depth": 3, "factor": 2,
                                       "input_size": [1, 1]}


@pytest.fixture(scope="module")
def untrained_teacher(tmp_path_factory) -> str:
    """A freshly initialised resnet20 file: enough for export checks, which do not depend on its accuracy."""
    from trainables import models

    path = tmp_path_factory.mktemp("untrained") / "resnet20.pt"
    torch.manual_seed(0)
    torch.save({"model": models.create("resnet20", num_classes=10).state_dict()}, path)
    return str(path)


QUICK = {
    "ijckd-d3-pooled": {"method": "ijckd", "loss_combination": "sr+fm", "connector_depth": 3, "fm_mode": "pooled"},
    "srrl": {"method": "srrl"},
    "teacher_head": {"method": "teacher_head"},  # same channel counts: no connector in the export
}


@pytest.mark.parametrize("name", list(QUICK))
def test_exported_model_is_evaluation_bit_for_bit(untrained_teacher, tmp_path, name):
    """One short trial per kind of export; its file, loaded with weights_only only, predicts exactly ``predict``."""
    cfg = {"dataset": "digits", "teacher": "resnet20", "teacher_checkpoint": untrained_teacher, "student": "resnet8",
           "epochs": 1, "batch_size": 32, "train_subset": 64, "seed": 0, **QUICK[name]}
    reporter = RunDirReporter(tmp_path)
    train(cfg, reporter=reporter, workdir=tmp_path)
    exported = load_exported(tmp_path / EXPORT_DIR / EXPORT_FILE)
    trial = build_trial(cfg, tmp_path)
    restore(trial, reporter.checkpoint_dir)
    method = trial.method.eval()
    with torch.inference_mode():
        for batch in trial.data.val.batches(256, shuffle=False, augment=False):
            assert torch.equal(exported(batch.x), method.predict(batch.x))


def test_export_module_option_also_writes_the_pickled_module(untrained_teacher, tmp_path):
    cfg = {"dataset": "digits", "teacher": "resnet20", "teacher_checkpoint": untrained_teacher, "student": "resnet8",
           "method": "simkd", "connector_depth": 1, "epochs": 1, "batch_size": 32, "train_subset": 64, "seed": 0,
           "export_module": True}
    train(cfg, workdir=tmp_path)
    weights = load_exported(tmp_path / EXPORT_DIR / EXPORT_FILE)
    pickled = torch.load(tmp_path / EXPORT_DIR / EXPORT_MODULE_FILE, weights_only=False)
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(weights(x), pickled(x))
    with pytest.raises(ConfigError, match="export_module must be true or false"):
        resolve_config({**cfg, "export_module": "yes"})


@pytest.mark.parametrize("method", ["ijckd", "simkd", "teacher_head"])
def test_teacher_head_stays_frozen(student_cfg, wide_digits_teacher, tmp_path, method):
    cfg = {**student_cfg, "method": method, "epochs": 1, "train_subset": 96}
    if method == "teacher_head":  # channels differ: a connector must train in front of the frozen head
        cfg.update(teacher=wide_digits_teacher["arch"], teacher_checkpoint=wide_digits_teacher["checkpoint"])
    trial = build_trial(cfg, tmp_path)
    teacher_params = list(trial.teacher.model.parameters())
    before = [p.detach().clone() for p in teacher_params]
    conn_before = [p.detach().clone() for p in trial.method.connector.parameters()]
    in_optimizer = {id(p) for group in trial.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher_params}
    assert {id(p) for p in trial.method.connector.parameters()} <= in_optimizer

    train_one_epoch(trial, 0)

    for p, b in zip(teacher_params, before):
        assert torch.equal(p, b) and p.grad is None and not p.requires_grad
    assert any(not torch.equal(p, b) for p, b in zip(trial.method.connector.parameters(), conn_before))


def test_srrl_evaluates_with_the_students_own_head(student_cfg, tmp_path):
    method = build_trial({**student_cfg, "method": "srrl"}, tmp_path).method.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(method.predict(x), method.student(x))
