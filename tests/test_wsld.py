"""WSLD: the weighted soft-label loss against values worked from the formula, training on digits, exact
resume, and a real Optuna trial of its declared space."""

from __future__ import annotations

import math
import pickle

import optuna
import pytest
import torch

from study.spaces import MethodSpace
from tests.helpers import straight_and_resumed
from trainables.checkpoint import load_state
from trainables.config import allowed_keys, resolve_config
from trainables.loop import train
from trainables.methods import METHODS
from trainables.methods.wsld import wsld_loss, wsld_weights

STUDENT = [[1.0, 2.0, 0.0], [0.5, 0.5, 2.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]]
LABELS = [0, 2]


def _softmax(v: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def _worked(temperature: float, kl: bool = False) -> float:
    """The WSLD term by hand: w = 1 - exp(-CE_s / CE_t) at T = 1, times the soft CE (or KL) at T, T^2, mean."""
    total = 0.0
    for s, t, y in zip(STUDENT, TEACHER, LABELS):
        ce_s, ce_t = -math.log(_softmax(s)[y]), -math.log(_softmax(t)[y])
        weight = 1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))
        p_s, p_t = _softmax(s, temperature), _softmax(t, temperature)
        soft = -sum(a * math.log(b) for a, b in zip(p_t, p_s))
        if kl:
            soft += sum(a * math.log(a) for a in p_t)
        total += weight * soft
    return temperature**2 * total / len(STUDENT)


@pytest.mark.parametrize("temperature,soft_term,expected", [
    (2.0, "cross_entropy", 3.8412783710983662),
    (2.0, "kl", 0.2599094706272298),
    (4.0, "cross_entropy", 16.041649102410695),
])
def test_wsld_loss_matches_the_worked_value(temperature, soft_term, expected):
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    y = torch.tensor(LABELS)
    value = wsld_loss(s, t, y, temperature, soft_term).item()
    assert value == pytest.approx(expected, abs=1e-5)
    assert value == pytest.approx(_worked(temperature, soft_term == "kl"), abs=1e-5)


def test_weights_carry_no_gradient_and_both_soft_terms_train_alike():
    """Sample 0: CE_s = 1.4076, CE_t = 0.4076, so w = 1 - exp(-3.453) = 0.9684; the teacher's label
    probability enters the weight only, and KL and soft CE differ by a constant: equal gradients."""
    s = torch.tensor(STUDENT, requires_grad=True)
    t, y = torch.tensor(TEACHER), torch.tensor(LABELS)
    w = wsld_weights(s, t, y)
    assert not w.requires_grad
    assert w[0].item() == pytest.approx(1 - math.exp(-(1.4076059644443801 / (0.40760596444438 + 1e-7))), abs=1e-6)
    (g_ce,) = torch.autograd.grad(wsld_loss(s, t, y, 2.0, "cross_entropy"), s)
    (g_kl,) = torch.autograd.grad(wsld_loss(s, t, y, 2.0, "kl"), s)
    assert torch.allclose(g_ce, g_kl, atol=1e-7)


def test_wsld_defaults_are_the_papers_cifar_setting(student_cfg):
    cfg = resolve_config({**student_cfg, "method": "wsld"})
    assert (cfg["temperature"], cfg["wsld_alpha"], cfg["ce_weight"], cfg["wsld_soft_term"]) == (4.0, 2.25, 1.0,
                                                                                                "cross_entropy")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # seeds 0-2 at one thread: README, "Digits, 3 epochs" table
def test_wsld_learns_on_digits(student_cfg, tmp_path, seed):
    final = train({**student_cfg, "method": "wsld", "seed": seed}, workdir=tmp_path)
    assert final["val/top1"] > 40.0  # chance is 10 %
    assert final["train/loss_wsld"] > 0 and final["teacher_calls"] > 0


def test_wsld_resumes_exactly(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "wsld", "epochs": 2, "train_subset": 128}
    straight, resumed = straight_and_resumed(cfg, tmp_path)
    a, b = load_state(straight.checkpoint_dir), load_state(resumed.checkpoint_dir)
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert straight.history[-1]["val/top1"] == resumed.history[-1]["val/top1"]


def test_wsld_space_runs_a_real_optuna_trial(student_cfg, tmp_path):
    base = resolve_config({**student_cfg, "method": "wsld"})
    space = MethodSpace("wsld", base, frozenset(allowed_keys(METHODS["wsld"].defaults)))
    space = pickle.loads(pickle.dumps(space))
    assert space.default_point() == {"lr": base["lr"], "weight_decay": base["weight_decay"], "temperature": 4.0,
                                     "wsld_alpha": 2.25}

    def objective(trial: optuna.Trial) -> float:
        space(trial)
        cfg = {**student_cfg, "method": "wsld", "epochs": 1, "train_subset": 96, **trial.params}
        return train(cfg, workdir=tmp_path / str(trial.number))["val/top1"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=1)
    params = study.trials[0].params
    assert set(params) == {"lr", "weight_decay", "temperature", "wsld_alpha"}
    assert 1.0 <= params["temperature"] <= 8.0 and 0.5 <= params["wsld_alpha"] <= 5.0
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
