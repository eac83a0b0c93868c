"""CRD: the NCE loss pinned against a numpy computation of eq. 18 on a fixed bank, fixed indices and a fixed Z;
Z set once from the first batch; the momentum update; the negatives' law and checkpointed generator; real
training on digits above chance; exact resume with the memory banks; a real Optuna trial of the space."""

from __future__ import annotations

import pickle

import numpy as np
import optuna
import pytest
import torch

from study.spaces import MethodSpace
from tests.helpers import StopAfter
from trainables.config import allowed_keys, resolve_config
from trainables.errors import ConfigError
from trainables.loop import build_trial, train, train_one_epoch
from trainables.methods import METHODS
from trainables.methods.crd import NegativeSampler, momentum_update, nce_loss, nce_scores
from trainables.reporting import RunDirReporter

MEMORY = [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0], [-0.6, 0.8], [0.8, -0.6]]  # N = 5 bank rows, dim 2
IDX = [[0, 1, 2], [3, 4, 0]]  # positive first, K = 2 negatives
ANCHOR = [[0.28, 0.96], [-1.0, 0.0]]
T, Z, N = 0.07, 3.5, 5


def numpy_nce(memory, idx, anchor, t, z, n):
    """Eq. 18 with RepDistiller's eps: P_n = 1/N, m = K; h = p / (p + m P_n + eps)."""
    memory, idx, anchor = np.asarray(memory), np.asarray(idx), np.asarray(anchor)
    p = np.exp(np.einsum("bkd,bd->bk", memory[idx], anchor) / t) / z
    m = idx.shape[1] - 1
    noise = m / n
    pos = np.log(p[:, 0] / (p[:, 0] + noise + 1e-7)).sum()
    neg = np.log(noise / (p[:, 1:] + noise + 1e-7)).sum()
    return -(pos + neg) / idx.shape[0]


def test_nce_loss_matches_the_formula_on_a_fixed_bank_indices_and_z():
    scores = nce_scores(torch.tensor(MEMORY, dtype=torch.float64), torch.tensor(IDX),
                        torch.tensor(ANCHOR, dtype=torch.float64), T)
    got = nce_loss(scores / Z, N).item()
    assert got == pytest.approx(numpy_nce(MEMORY, IDX, ANCHOR, T, Z, N), abs=1e-5)
    assert got == pytest.approx(8.5335362, abs=1e-5)  # by hand: -(log(0.4/16.0) + log(0.4/2.58e5) + ...)/2


def test_momentum_update_moves_and_renormalises_only_the_indexed_rows():
    memory = torch.tensor(MEMORY)
    momentum_update(memory, torch.tensor([1, 3]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]), 0.5)
    half = 1 / np.sqrt(2)
    assert memory[1].tolist() == pytest.approx([half, half], abs=1e-6)  # (0.5, 0.5) normalised
    assert memory[3].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)  # (0, 0.8) normalised
    assert torch.allclose(memory[[0, 2, 4]], torch.tensor([MEMORY[0], MEMORY[2], MEMORY[4]]))


def test_z_is_set_once_from_the_first_batch_then_kept(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "crd", "epochs": 1, "train_subset": 96, "nce_k": 32}
    trial = build_trial(cfg, tmp_path)
    method = trial.method
    assert method.memory_s.shape == (96, 128) and method.n_data == 96  # the bank follows train_subset
    assert (method.z < 0).all()
    train_one_epoch(trial, 0, max_steps=1)
    z = method.z.clone()
    assert (z > 0).all()
    train_one_epoch(trial, 0, max_steps=2)
    assert torch.equal(method.z, z)


def test_other_class_negatives_are_distinct_other_class_examples_and_the_generator_resumes():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    sampler = NegativeSampler("other_class", 4, labels, seed=0, device=torch.device("cpu"))
    y = torch.tensor([0, 1, 2, 2])
    state = sampler.state()
    idx = sampler.draw(y)
    assert idx.shape == (4, 4)
    for row, label in zip(idx.tolist(), y.tolist()):
        assert len(set(row)) == 4 and all(labels[i] != label for i in row)
    sampler.load_state(state)
    assert torch.equal(sampler.draw(y), idx)  # same state, same negatives
    # pool of class 0 is 7 < K = 9: with replacement, still only other classes
    big = NegativeSampler("other_class", 9, labels, seed=0, device=torch.device("cpu")).draw(torch.tensor([0, 2]))
    assert big.shape == (2, 9) and (labels[big[0]] != 0).all() and (labels[big[1]] != 2).all()
    uniform = NegativeSampler("uniform", 50, labels, seed=0, device=torch.device("cpu")).draw(y)
    assert uniform.shape == (4, 50) and int(uniform.min()) >= 0 and int(uniform.max()) < 10


def test_bad_negatives_choice_fails_before_work(student_cfg):
    with pytest.raises(ConfigError, match="crd_negatives must be one of other_class, uniform; got 'hard'"):
        resolve_config({**student_cfg, "method": "crd", "crd_negatives": "hard"})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # seeds 0-2 at one thread: README, "Digits, 3 epochs" table
def test_crd_learns_on_digits_well_above_chance(student_cfg, tmp_path, seed):
    torch.set_num_threads(1)  # the suite's worst case (see the preamble): the margin must hold single-threaded
    cfg = {**student_cfg, "method": "crd", "epochs": 3, "nce_k": 256, "seed": seed}
    final = train(cfg, workdir=tmp_path)
    assert final["val/top1"] > 30.0 and final["test/top1"] > 30.0, final  # chance is 10 %
    assert "train/loss_crd" in final and np.isfinite(final["train/loss_crd"])


@pytest.mark.slow
def test_resume_is_exact_with_the_memory_banks(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "crd", "epochs": 2, "train_subset": 128, "nce_k": 64}
    straight = RunDirReporter(tmp_path / "straight")
    train(cfg, reporter=straight, workdir=tmp_path / "straight")
    first = StopAfter(tmp_path / "cut", k=1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=first, workdir=tmp_path / "cut")
    resumed = RunDirReporter(tmp_path / "cut")
    train(cfg, reporter=resumed, resume_from=first.checkpoint_dir, workdir=tmp_path / "cut")
    for key in ("val/top1", "train/loss", "train/loss_crd"):
        assert resumed.history[-1][key] == straight.history[-1][key], key


def test_crd_space_runs_real_optuna_trials():
    base = resolve_config({"method": "crd", "dataset": "digits", "student": "resnet8", "teacher": "resnet20",
                           "teacher_checkpoint": "unused.pt", "epochs": 1})
    space = MethodSpace("crd", base, frozenset(allowed_keys(METHODS["crd"].defaults)), frozenset({"weight_decay"}))
    space = pickle.loads(pickle.dumps(space))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: space(trial) or 0.0, n_trials=8)
    dims = set()
    for trial in study.trials:
        p = trial.params
        assert {"lr", "crd_beta", "feat_dim", "nce_t"} <= set(p) and "weight_decay" not in p
        assert 0.1 <= p["crd_beta"] <= 2.0 and 0.03 <= p["nce_t"] <= 0.3
        dims.add(p["feat_dim"])
        resolve_config({**base, **p})  # every proposal is a valid config
    assert dims <= {64, 128, 256} and len(dims) > 1
    assert space.default_point()["crd_beta"] == 0.8 and space.default_point()["nce_t"] == 0.07
