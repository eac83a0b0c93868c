"""Worked values of the CRD (NCE), OFD (partial L2 + BN margin) and WSLD losses, from numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from trainables.methods.crd import nce_loss
from trainables.methods.ofd import bn_margin, ofd_distance
from trainables.methods.wsld import wsld_loss

S = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]])
T = np.array([[1.5, 1.0, -0.5], [0.0, 2.0, 0.4]])
Y = np.array([0, 2])


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def test_wsld_worked_value_ce_and_kl():
    tau = 4.0
    ls, pt = _log_softmax(S / tau), np.exp(_log_softmax(T / tau))
    ce_s, ce_t = -_log_softmax(S)[[0, 1], Y], -_log_softmax(T)[[0, 1], Y]
    w = 1 - np.exp(-np.maximum(ce_s / (ce_t + 1e-7), 0))
    soft_ce = -(pt * ls).sum(1)
    soft_kl = (pt * (np.log(pt) - ls)).sum(1)
    args = (torch.tensor(S), torch.tensor(T), torch.tensor(Y), tau)
    assert abs(wsld_loss(*args, "ce").item() - tau**2 * (w * soft_ce).mean()) < 1e-5
    assert abs(wsld_loss(*args, "kl").item() - tau**2 * (w * soft_kl).mean()) < 1e-5


def test_nce_worked_value_fixed_memory_and_negatives():
    """v (2 x 2 unit vectors), memory of N = 4 slots, positives at 0 and 1, negatives [[2, 3], [3, 2]], Z = 1."""
    v = np.array([[1.0, 0.0], [0.6, 0.8]])
    mem = np.array([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0], [0.6, -0.8]])
    idx = np.array([[0, 2, 3], [1, 3, 2]])
    scores = np.exp(np.einsum("bkd,bd->bk", mem[idx], v) / 0.07)
    k, n = 2, 4
    pn = k / n
    expected = -(np.log(scores[:, 0] / (scores[:, 0] + pn + 1e-7)).sum()
                 + np.log(pn / (scores[:, 1:] + pn + 1e-7)).sum()) / 2
    assert abs(nce_loss(torch.tensor(scores), n).item() - expected) < 1e-5 * max(1, abs(expected))


def test_ofd_margin_and_partial_l2_worked_value():
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 5.0]))
    # channel 0: Phi(0) = 0.5 > 0.001: m = -phi(0) / 0.5 = -2/sqrt(2 pi); channel 1: Phi(-10) tiny: m = -1.5
    m = [-2 / math.sqrt(2 * math.pi), -1.5]
    assert np.allclose(bn_margin(bn).flatten().numpy(), m, atol=1e-6)
    s = np.array([[[[0.5]], [[-1.0]]], [[[-2.0]], [[2.0]]]])  # B=2, C=2, 1x1
    t = np.array([[[[-1.0]], [[0.5]]], [[[-0.5]], [[-2.0]]]])
    mm = np.array(m).reshape(1, 2, 1, 1)
    loss = ((s - mm) ** 2 * ((s > mm) & (t <= mm)) + (s - t) ** 2 * ((s > t) & (t > mm) & (t <= 0))
            + (s - t) ** 2 * (t > 0))
    expected = loss.sum() / 2
    got = ofd_distance(torch.tensor(s), torch.tensor(t), torch.tensor(mm, dtype=torch.float32)).item()
    assert abs(got - expected) < 1e-5


# -- through the real loop ---------------------------------------------------------------------------------
import pickle  # noqa: E402

import optuna  # noqa: E402
import pytest  # noqa: E402

from study.spaces import MethodSpace  # noqa: E402
from trainables import checkpoint as ckpt  # noqa: E402
from trainables.config import allowed_keys, resolve_config  # noqa: E402
from trainables.errors import ConfigError  # noqa: E402
from trainables.loop import build_trial, train  # noqa: E402
from trainables.methods import METHODS  # noqa: E402
from trainables.reporting import RunDirReporter  # noqa: E402

KNOBS = {"crd": {"nce_k": 256}, "ofd": {}, "wsld": {}}


class _StopAfterFirstEpoch(RunDirReporter):
    def __call__(self, metrics, checkpoint_dir):
        super().__call__(metrics, checkpoint_dir)
        raise KeyboardInterrupt("simulated stop")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(KNOBS))
def test_learns_digits_well_above_chance(method, student_cfg, tmp_path):
    metrics = train({**student_cfg, "method": method, **KNOBS[method]}, workdir=tmp_path)
    assert metrics["val/top1"] > 0.5  # chance is 0.1


@pytest.mark.slow
def test_crd_resume_is_exact_memory_bank_included(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "crd", "nce_k": 64, "epochs": 2, "train_subset": 128}
    straight = RunDirReporter(tmp_path / "straight")
    train(cfg, reporter=straight, workdir=tmp_path / "straight")
    first = _StopAfterFirstEpoch(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first, workdir=tmp_path / "cut")
    state = ckpt.load_state(first.checkpoint_dir)
    assert "memory.memory_s" in state["method"] and "crd_generator" in state["extra"]
    resumed = RunDirReporter(tmp_path / "cut")
    train(cfg, reporter=resumed, resume_from=first.checkpoint_dir, workdir=tmp_path / "cut")
    assert resumed.history[-1]["train/loss"] == straight.history[-1]["train/loss"]
    assert resumed.history[-1]["val/top1"] == straight.history[-1]["val/top1"]


def test_crd_memory_follows_train_subset_and_refuses_a_large_k(student_cfg, tmp_path):
    trial = build_trial({**student_cfg, "method": "crd", "nce_k": 32, "train_subset": 100}, workdir=tmp_path)
    assert trial.method.memory.memory_s.shape == (100, 128)
    with pytest.raises(ConfigError, match="nce_k must be below the training split's 100 images"):
        build_trial({**student_cfg, "method": "crd", "nce_k": 100, "train_subset": 100}, workdir=tmp_path)


def test_ofd_refuses_a_family_without_preact_stages(student_cfg, tmp_path):
    with pytest.raises(ConfigError, match="student 'vgg8' does not have"):
        build_trial({**student_cfg, "method": "ofd", "student": "vgg8"}, workdir=tmp_path)


@pytest.mark.parametrize("method", sorted(KNOBS))
def test_search_space_runs_real_optuna_trials(method, student_cfg):
    base = resolve_config({**student_cfg, "method": method})
    space = MethodSpace(method, base, frozenset(allowed_keys(METHODS[method].defaults)), frozenset())
    space = pickle.loads(pickle.dumps(space))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: space(trial) or 0.0, n_trials=4)
    searched = {p.name for p in METHODS[method].params if p.search is not None}
    assert searched and all(searched <= set(t.params) for t in study.trials)
