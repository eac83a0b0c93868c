"""Connectors: parameter counts and shapes per depth, spatial alignment, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables import models
from trainables.config import resolve_config
from trainables.connectors import Connector, build_connector
from trainables.data import build_data
from trainables.errors import ConfigError
from trainables.loop import build_trial, train
from trainables.methods import MethodContext, get_method
from trainables.methods.softmax_regression import mse
from trainables.models.base import ZooModel
from trainables.teacher import FrozenTeacher, TeacherSource, load_teacher_model


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Hand counts for C_s = 64 -> C_t = 128: conv weights (no bias) + BN weight and bias (2 per channel).
EXPECTED_PARAMS = {
    (1, 2): 64 * 128 + 2 * 128,  # 1x1: 8448
    (2, 2): (64 * 128 + 2 * 128) + (128 * 128 + 2 * 128),  # 1x1-1x1: 25088
    (3, 2): (64 * 64 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + (64 * 128 + 2 * 128),  # hidden 64: 49664
    (3, 4): (64 * 32 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + (32 * 128 + 2 * 128),  # hidden 32: 15744
}


@pytest.mark.parametrize("depth,factor", sorted(EXPECTED_PARAMS))
def test_connector_parameter_count_and_shape(depth, factor):
    conn = Connector(64, 128, depth=depth, factor=factor)
    assert n_params(conn) == EXPECTED_PARAMS[(depth, factor)]
    convs = [m for m in conn.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == {1: [1], 2: [1, 1], 3: [1, 3, 1]}[depth]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in conn.modules()) == depth
    assert sum(isinstance(m, nn.ReLU) for m in conn.modules()) == depth
    out = conn(torch.randn(4, 64, 8, 8))
    assert out.shape == (4, 128, 8, 8)
    assert (out >= 0).all()  # ends in ReLU


def test_factor_that_leaves_no_hidden_channel_is_an_error():
    with pytest.raises(ValueError, match="connector_factor 256"):
        Connector(64, 128, depth=3, factor=256)


@pytest.mark.parametrize(
    "student,teacher,mode,input_size,target",
    [
        ((64, 4, 4), (128, 8, 8), "spatial", None, (4, 4)),  # student smaller: teacher map pooled as target
        ((64, 8, 8), (128, 4, 4), "spatial", (4, 4), (4, 4)),  # student larger: pooled before the connector
        ((64, 8, 8), (128, 8, 8), "spatial", None, (8, 8)),
        ((64, 8, 4), (128, 4, 8), "spatial", (4, 4), (4, 4)),  # per dimension
        ((64, 8, 8), (128, 8, 8), "pooled_input", (1, 1), (1, 1)),
        ((64, 8, 8), (128, 8, 8), "pooled", (1, 1), (1, 1)),  # the earlier name of pooled_input
    ],
)
def test_alignment_plan(student, teacher, mode, input_size, target):
    conn, size = build_connector(student, teacher, depth=3, factor=2, fm_mode=mode)
    assert conn.input_size == input_size
    assert size == target
    out = conn(torch.randn(2, *student))
    assert out.shape == (2, teacher[0], *target)


class PooledMap(ZooModel):
    """A zoo model whose last map is average-pooled 2x (8x8 -> 4x4), like a ShuffleNet's 4x4 map."""

    classifier_path = "inner.fc"

    def __init__(self, inner: ZooModel) -> None:
        super().__init__()
        self.inner = inner

    def forward_stages(self, x):
        stages = self.inner.forward_stages(x)
        return stages[:-1] + [F.avg_pool2d(stages[-1], 2)]


def _method(name, student, teacher_model, cfg, tmp_path):
    ctx = MethodContext(num_classes=10, input_shape=(3, 32, 32), device=torch.device("cpu"), workdir=tmp_path,
                        epochs=1)
    return get_method(name)(student, TeacherSource(FrozenTeacher(teacher_model)), resolve_config(cfg), ctx)


@pytest.fixture(scope="module")
def digits_batch():
    data = build_data({"dataset": "digits"})
    return next(iter(data.train.batches(32, shuffle=False, augment=False)))


def test_student_4x4_map_against_teacher_8x8(student_cfg, digits_batch, tmp_path):
    """The 8x8 teacher map is pooled to the student's 4x4 for the feature loss; prediction is unchanged."""
    torch.manual_seed(0)
    teacher = load_teacher_model(student_cfg["teacher"], student_cfg["teacher_checkpoint"], 10)
    student = PooledMap(models.create("resnet8", num_classes=10))
    cfg = {**student_cfg, "method": "ijckd", "loss_combination": "sr+fm", "connector_depth": 3}
    method = _method("ijckd", student, teacher, cfg, tmp_path)
    assert method.student_shape == (64, 4, 4) and method.teacher_shape == (64, 8, 8)
    assert method.connector.input_size is None and method.target_size == (4, 4)

    step = method.training_step(digits_batch, 0)
    mapped = method.connector(student.forward_features(digits_batch.x))
    assert mapped.shape == (32, 64, 4, 4)
    t_map = teacher.forward_features(digits_batch.x)
    # BN in training mode normalises per batch, so the same batch gives the same mapped features
    assert step.losses["fm"].item() == pytest.approx(mse(mapped, F.avg_pool2d(t_map, 2)).item(), rel=1e-5)
    step.losses["fm"].backward()
    assert method.connector.layers[0].weight.grad is not None
    method.eval()
    assert method.predict(digits_batch.x).shape == (32, 10)


def test_student_8x8_map_against_teacher_4x4(student_cfg, digits_batch, tmp_path):
    """A larger student map is pooled to the teacher's 4x4 before the connector (SimKD's choice)."""
    inner = load_teacher_model(student_cfg["teacher"], student_cfg["teacher_checkpoint"], 10)
    teacher = PooledMap(inner)
    student = models.create("resnet8", num_classes=10)
    cfg = {**student_cfg, "method": "simkd"}
    method = _method("simkd", student, teacher, cfg, tmp_path)
    assert method.connector.input_size == (4, 4) and method.target_size == (4, 4)
    step = method.training_step(digits_batch, 0)
    expected = mse(method.connector(student.forward_features(digits_batch.x)), teacher.forward_features(digits_batch.x))
    assert step.losses["fm"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_shufflev1_student_with_4x4_map_trains_in_the_loop(student_cfg, tmp_path):
    cfg = {**student_cfg, "method": "ijckd", "student": "ShuffleV1", "loss_combination": "sr+fm", "epochs": 1,
           "train_subset": 128}
    trial = build_trial(cfg, tmp_path)
    assert trial.method.student_shape[1:] == (4, 4) and trial.method.target_size == (4, 4)
    final = train(cfg, workdir=tmp_path)
    assert final["train/loss_fm"] > 0 and final["bound/student_err"] <= final["bound/rhs"]


def test_teacher_head_builds_a_connector_only_where_channels_differ(student_cfg, wide_digits_teacher, tmp_path):
    same = build_trial({**student_cfg, "method": "teacher_head"}, tmp_path).method
    assert same.connector is None
    assert [id(p) for p in same.trainable_parameters()] == [id(p) for p in same.student.parameters()]
    wide_cfg = {**student_cfg, "method": "teacher_head", "teacher": wide_digits_teacher["arch"],
                "teacher_checkpoint": wide_digits_teacher["checkpoint"]}
    wide = build_trial(wide_cfg, tmp_path).method
    assert wide.connector is not None and wide.connector.depth == 1
    assert (wide.connector.in_channels, wide.connector.out_channels) == (64, 128)
    assert wide.connector.input_size is None  # no feature target, nothing to align


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"method": "ijckd", "connector_depth": 4}, "connector_depth must be one of 1, 2, 3; got '4'"),
        ({"method": "simkd", "connector_factor": 0}, "connector_factor must be an integer >= 1"),
        ({"method": "srrl", "connector_factor": 1.5}, "connector_factor must be an integer >= 1"),
        ({"method": "ijckd", "fm_mode": "flat"}, "fm_mode must be one of spatial, spatial_mean, pooled_input"),
        ({"method": "ijckd", "mse_reduction": "sum"}, "mse_reduction must be one of mean, batchmean"),
        ({"method": "ijckd", "loss_combination": "kd"}, "loss_combination must be one of sr, fm, sr\\+fm"),
        ({"method": "ijckd", "alpha": -1}, "alpha must be >= 0"),
        ({"method": "ijckd", "alpha_ce": 0, "alpha": 0}, "trains nothing"),
        ({"method": "teacher_head", "fm_mode": "spatial"}, "unknown config key 'fm_mode'"),
    ],
)
def test_bad_family_config_fails_before_work(student_cfg, extra, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({**student_cfg, **extra})


def test_factor_too_large_for_the_teacher_is_a_config_error(student_cfg, tmp_path):
    with pytest.raises(ConfigError, match="connector_factor 128 leaves no hidden channel for a 64-channel teacher"):
        build_trial({**student_cfg, "method": "simkd", "connector_factor": 128}, tmp_path)
