"""OFD: the BN margin and partial L2 against values worked from the formula, each family's pre-activation
maps against a plain forward, the families it refuses, training on digits, exact resume, and a real Optuna
trial of its declared space."""

from __future__ import annotations

import math
import pickle

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from study.spaces import MethodSpace
from tests.helpers import straight_and_resumed
from trainables.checkpoint import load_state
from trainables.config import allowed_keys, resolve_config
from trainables.errors import ConfigError
from trainables.loop import build_trial, train
from trainables.methods import METHODS
from trainables.methods.ofd import batch_statistics, bn_margin, ofd_distance
from trainables.models import create, models_with


def test_ofd_margin_and_partial_l2_worked_value():
    """Channel 0 (gamma 1, beta 0): Phi(0) = 0.5 > 0.001, so m = -phi(0) / 0.5 = -2 / sqrt(2 pi);
    channel 1 (gamma 0.5, beta 5): Phi(-10) is tiny, so m = -3 * 0.5 = -1.5."""
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 5.0]))
    m = [-2 / math.sqrt(2 * math.pi), -1.5]
    assert np.allclose(bn_margin(bn).flatten().numpy(), m, atol=1e-6)
    s = np.array([[[[0.5]], [[-1.0]]], [[[-2.0]], [[2.0]]]])  # B = 2, C = 2, 1x1 maps
    t = np.array([[[[-1.0]], [[0.5]]], [[[-0.5]], [[-2.0]]]])
    mm = np.array(m).reshape(1, 2, 1, 1)
    loss = ((s - mm) ** 2 * ((s > mm) & (t <= mm)) + (s - t) ** 2 * ((s > t) & (t > mm) & (t <= 0))
            + (s - t) ** 2 * (t > 0))
    # by hand: (0.5 + 0.798)^2 (s > m >= t) + (-1 - 0.5)^2 (t > 0) + 0 + (2 + 1.5)^2 (s > m >= t), over B = 2
    by_hand = ((0.5 + 2 / math.sqrt(2 * math.pi)) ** 2 + 1.5**2 + 3.5**2) / 2
    assert loss.sum() / 2 == pytest.approx(by_hand)
    got = ofd_distance(torch.tensor(s), torch.tensor(t), torch.tensor(mm, dtype=torch.float32)).item()
    assert got == pytest.approx(by_hand, abs=1e-5)


# Where ReLU(preact[i]) is not stage i itself (module docstrings): the input of this module in a plain forward.
RELU_OF_PREACT_FEEDS = {
    "wrn_16_1": {1: "block2.layer.0.conv1", 2: "block3.layer.0.conv1"},  # the next stage's first BN-ReLU
    "ShuffleV2": {3: "conv2"},  # mdistiller's stage 3 is layer3, before the 1x1 head conv
}


def _randomised(name: str) -> torch.nn.Module:
    """``name`` in eval mode with BN statistics and affines drawn away from identity (negative regions exist)."""
    torch.manual_seed(0)
    model = create(name, num_classes=10).eval()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV1", "ShuffleV2"])
def test_preact_maps_are_the_pre_relu_maps_of_a_plain_forward(name):
    """The preact pass's stages equal ``forward_stages``; each map has its stage's shape and its ReLU is that
    stage (or, where the ReLU belongs to the next layer, that layer's input in a plain forward)."""
    model = _randomised(name)
    feeds = RELU_OF_PREACT_FEEDS.get(name, {})
    seen: dict[str, torch.Tensor] = {}
    for path in feeds.values():
        model.get_submodule(path).register_forward_pre_hook(lambda mod, args, path=path: seen.update({path: args[0]}))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.forward_stages(x)
        both = model.forward_preact_stages(x)
    assert len(both.stages) == len(both.preact) == len(plain) == 4
    for a, b in zip(both.stages, plain):
        assert torch.equal(a, b)
    for i in (1, 2, 3):
        pre, target = both.preact[i], seen[feeds[i]] if i in feeds else plain[i]
        if (name, i) != ("ShuffleV2", 3):
            assert pre.shape == plain[i].shape
        assert (pre < 0).any()  # a real pre-activation map, not a post-ReLU one
        assert torch.allclose(torch.relu(pre), target, atol=1e-6), i


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
def test_bn_before_relu_names_one_bn_per_preact_map(name):
    model = _randomised(name)
    x = torch.randn(2, 3, 32, 32)
    outputs: list[torch.Tensor] = []
    bns = model.bn_before_relu()
    for bn in bns:
        bn.register_forward_hook(lambda mod, args, out: outputs.append(out))
    with torch.no_grad():
        maps = model.forward_preact_stages(x).preact[1:]
    assert len(bns) == len(maps) == 3
    assert [bn.num_features for bn in bns] == [m.shape[1] for m in maps]
    if name == "wrn_16_1":  # pre-activation blocks: each map is exactly its BN's output
        for out, m in zip(outputs, maps):
            assert torch.equal(out, m)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV1", "ShuffleV2"])
def test_a_training_preact_pass_updates_each_bn_once(name):
    """mdistiller's WRN runs three BNs twice per step for its maps; here a preact pass counts like a forward."""
    model = create(name, num_classes=10).train()
    model.forward_preact_stages(torch.randn(2, 3, 32, 32))
    assert {int(bn.num_batches_tracked) for bn in model.modules() if isinstance(bn, nn.BatchNorm2d)} == {1}


def test_batch_statistics_normalise_per_batch_and_leave_the_running_ones_alone():
    """mdistiller's OFD runs its teacher in training mode: BN by the batch's mean and (biased) variance."""
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([5.0, -5.0]))
        bn.running_var.copy_(torch.tensor([4.0, 9.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]], [[[5.0, 7.0]], [[2.0, 6.0]]]])  # (2, 2, 1, 2)
    # channel 0 values 1 3 5 7: mean 4, biased var 5; channel 1 values 2 2 2 6: mean 3, biased var 3
    expected = torch.stack([(x[:, 0] - 4.0) / math.sqrt(5.0 + bn.eps), (x[:, 1] - 3.0) / math.sqrt(3.0 + bn.eps)], 1)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with torch.inference_mode(), batch_statistics(nn.Sequential(bn)):
        out = bn(x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not bn.training and bn.track_running_stats  # restored
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())  # running stats untouched
    assert torch.allclose(bn(x)[:, 0], (x[:, 0] - 5.0) / math.sqrt(4.0 + bn.eps), atol=1e-6)  # eval: running


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_ofd_teacher_maps_follow_the_chosen_bn_statistics(student_cfg, tmp_path, mode):
    cfg = {**student_cfg, "method": "ofd", "ofd_teacher_bn": mode, "epochs": 1, "train_subset": 32}
    trial = build_trial(cfg, workdir=tmp_path)
    method, teacher = trial.method.train(), trial.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = next(iter(method.train_batches(trial.data.train, trial.cfg, 0)))
    seen, plain = [], teacher.forward_preact_stages

    def recorded(x):
        out = plain(x)
        seen.append([t.clone() for t in out.preact])
        return out

    teacher.forward_preact_stages = recorded
    trial.teacher.on_epoch_start(0)
    method.on_epoch_start(0)
    method.training_step(batch, 0)
    del teacher.forward_preact_stages
    assert not teacher.training and all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    reference = create(cfg["teacher"], num_classes=10)
    reference.load_state_dict(before)
    reference.train(mode == "batch")  # a plain copy in training mode normalises per batch
    with torch.no_grad():
        expected = reference.forward_preact_stages(batch.x).preact
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(seen[0], expected))


def test_ofd_refuses_a_family_without_preact_stages(student_cfg, tmp_path):
    with pytest.raises(ConfigError, match="student 'vgg8' does not have; students with them: ShuffleV1, ShuffleV2, "
                                          "resnet110.*wrn_40_2$") as err:
        build_trial({**student_cfg, "method": "ofd", "student": "vgg8"}, workdir=tmp_path)
    assert str(err.value).split("them: ")[1].split(", ") == models_with("supports_preact")  # the registry's list


def test_ofd_refuses_a_shufflenet_teacher(tmp_path):
    """ShuffleNets name no BN behind their maps (as in mdistiller): students only."""
    path = tmp_path / "shufflev1.pt"
    torch.save({"model": create("ShuffleV1", num_classes=10).state_dict()}, path)
    cfg = {"dataset": "digits", "method": "ofd", "teacher": "ShuffleV1", "teacher_checkpoint": str(path),
           "student": "resnet8"}
    with pytest.raises(ConfigError, match="BN behind each map.*teacher 'ShuffleV1' does not have; teachers with "
                                          "them: resnet110, .*wrn_40_2$") as err:
        build_trial(cfg, workdir=tmp_path / "run")
    assert "Shuffle" not in str(err.value).split("them: ")[1]


@pytest.mark.parametrize("student", ["wrn_16_1", "ShuffleV1"])
def test_ofd_takes_a_training_step_from_a_wrn_teacher(wide_digits_teacher, student, tmp_path):
    """Table 1's WRN teacher with a WRN and a ShuffleNet student: one optimizer step of the built trial, both
    terms finite and positive, every connector trained (the maps reach the loss)."""
    cfg = {"dataset": "digits", "teacher": "wrn_16_2", "teacher_checkpoint": wide_digits_teacher["checkpoint"],
           "student": student, "method": "ofd", "epochs": 1, "batch_size": 32, "train_subset": 32, "seed": 0}
    trial = build_trial(cfg, workdir=tmp_path)
    method = trial.method.train()
    trial.teacher.on_epoch_start(0)
    method.on_epoch_start(0)
    step = method.training_step(next(iter(method.train_batches(trial.data.train, trial.cfg, 0))), 0)
    assert all(0 < v.item() < math.inf for v in step.losses.values()) and set(step.losses) == {"ce", "ofd"}
    trial.optimizer.zero_grad()
    sum(step.losses.values()).backward()
    assert len(method.connectors) == 3
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.connectors.parameters())
    trial.optimizer.step()
    assert all(torch.isfinite(p).all() for p in method.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # seeds 0-2 at one thread: README, "Digits, 3 epochs" table
def test_ofd_learns_on_digits(student_cfg, tmp_path, seed):
    final = train({**student_cfg, "method": "ofd", "seed": seed}, workdir=tmp_path)
    assert final["val/top1"] > 40.0  # chance is 10 %
    assert final["train/loss_ofd"] > 0


def test_ofd_resumes_exactly(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "ofd", "epochs": 2, "train_subset": 128}
    straight, resumed = straight_and_resumed(cfg, tmp_path)
    a, b = load_state(straight.checkpoint_dir), load_state(resumed.checkpoint_dir)
    assert any(key.startswith("connectors.") for key in a["method"])  # the connectors train and are saved
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert straight.history[-1]["val/top1"] == resumed.history[-1]["val/top1"]


def test_ofd_space_runs_a_real_optuna_trial(student_cfg, tmp_path):
    base = resolve_config({**student_cfg, "method": "ofd"})
    space = pickle.loads(pickle.dumps(MethodSpace("ofd", base, frozenset(allowed_keys(METHODS["ofd"].defaults)))))

    def objective(trial: optuna.Trial) -> float:
        space(trial)
        cfg = {**student_cfg, "method": "ofd", "epochs": 1, "train_subset": 96, **trial.params}
        return train(cfg, workdir=tmp_path / str(trial.number))["val/top1"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert 1e-4 <= study.trials[0].params["feat_weight"] <= 1e-2
