"""The softmax-regression family (srrl, simkd, ijckd, teacher_head): losses, learning, frozen head, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.data import build_data
from trainables.loop import build_trial, restore, train, train_one_epoch
from trainables.methods.softmax_regression import EXPORT_DIR, EXPORT_FILE, ijckd_loss, mse
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
    exported = torch.load(path, weights_only=False)
    assert not exported.training
    trial = build_trial(run["cfg"], run["workdir"])
    restore(trial, run["reporter"].checkpoint_dir)
    method = trial.method.eval()
    correct, n = 0, 0
    with torch.inference_mode():
        for batch in trial.data.val.batches(256, shuffle=False, augment=False):
            got = exported(batch.x)
            expected = method.predict(batch.x)
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(got.argmax(1), expected.argmax(1))
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
