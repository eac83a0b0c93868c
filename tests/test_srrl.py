"""SRRL's feature-loss readings: spatial means (the official code, default), SimKD's pooled input, maps."""

from __future__ import annotations

import pytest
import torch

from trainables.config import resolve_config
from trainables.connectors import build_connector
from trainables.data import build_data
from trainables.errors import ConfigError
from trainables.loop import build_trial


@pytest.fixture(scope="module")
def digits_batch():
    data = build_data({"dataset": "digits"})
    return next(iter(data.train.batches(32, shuffle=False, augment=False)))


def test_spatial_mean_worked_value(student_cfg, tmp_path):
    """One channel: connector output [[1, 3], [5, 7]] (mean 4) against a teacher map [[0, 2], [2, 4]]
    (mean 2): the spatial-mean FM is (4 - 2)^2 = 4, where an element-wise loss would give 20 / 4 = 5."""
    method = build_trial({**student_cfg, "method": "srrl"}, tmp_path).method
    assert method.fm_mode == "spatial_mean" and method.target_size == (1, 1)
    assert method.connector.input_size is None  # the connector reads the student's full map
    mapped = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    teacher_map = torch.tensor([[[[0.0, 2.0], [2.0, 4.0]]]])
    assert method.feature_loss(mapped, teacher_map).item() == pytest.approx(4.0)


def test_srrl_terms_follow_the_official_code(student_cfg, digits_batch, tmp_path):
    """FM = MSE(mean_hw(conn(F_s)), mean_hw(F_t)) and SR = MSE(fc_t(mean_hw(conn(F_s))), z_t), recomputed
    here from the raw modules (BN in training mode normalises per batch, so one batch gives one output)."""
    method = build_trial({**student_cfg, "method": "srrl"}, tmp_path).method
    step = method.training_step(digits_batch, 0)
    mapped = method.connector.layers(method.student.forward_features(digits_batch.x))
    assert mapped.shape[-2:] == method.student_shape[1:]
    with torch.no_grad():
        t_map = method.teacher.model.forward_features(digits_batch.x)
        t_logits = method.teacher.model(digits_batch.x)
    s_mean, t_mean = mapped.mean(dim=(2, 3)), t_map.mean(dim=(2, 3))
    fm = ((s_mean - t_mean) ** 2).mean()
    sr = ((method.teacher.classifier()(s_mean) - t_logits) ** 2).mean()
    assert step.losses["fm"].item() == pytest.approx(fm.item(), rel=1e-4)
    assert step.losses["sr"].item() == pytest.approx(sr.item(), rel=1e-4)


def test_pooled_is_an_alias_of_simkds_pooled_input(student_cfg, tmp_path):
    for name in ("pooled", "pooled_input"):
        method = build_trial({**student_cfg, "method": "srrl", "fm_mode": name}, tmp_path / name).method
        assert method.fm_mode == "pooled_input"
        assert method.connector.input_size == (1, 1) and method.target_size == (1, 1)
    spatial = build_trial({**student_cfg, "method": "srrl", "fm_mode": "spatial"}, tmp_path / "s").method
    assert spatial.connector.input_size is None and spatial.target_size == (8, 8)


def test_spatial_mean_never_aligns_sizes():
    conn, size = build_connector((64, 8, 8), (128, 4, 4), depth=1, fm_mode="spatial_mean")
    assert conn.input_size is None and size == (1, 1)
    assert conn(torch.randn(2, 64, 8, 8)).shape == (2, 128, 8, 8)


def test_only_the_family_keeps_its_default(student_cfg):
    assert resolve_config({**student_cfg, "method": "srrl"})["fm_mode"] == "spatial_mean"
    assert resolve_config({**student_cfg, "method": "ijckd"})["fm_mode"] == "spatial"
    with pytest.raises(ConfigError, match="fm_mode must be one of spatial, spatial_mean, pooled_input; got 'mean'"):
        resolve_config({**student_cfg, "method": "srrl", "fm_mode": "mean"})
