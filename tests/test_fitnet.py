"""FitNet's hint regressor: the benchmarks' ConvReg per size ratio (shapes, parameters, worked values), the
3x3 option, config errors, and the method building the chosen one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainables.config import resolve_config
from trainables.errors import ConfigError
from trainables.loop import build_trial
from trainables.losses import feature_mse
from trainables.methods.fitnet import Conv3x3Regressor, ConvReg, build_regressor


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# Hand counts for 16 -> 32 channels: conv weight + conv bias (32) + BN weight and bias (2 x 32).
@pytest.mark.parametrize(
    "s_size,t_size,kind,kernel,stride,params",
    [
        ((8, 8), (8, 8), nn.Conv2d, (1, 1), (1, 1), 16 * 32 + 32 + 64),  # 608
        ((8, 8), (4, 4), nn.Conv2d, (3, 3), (2, 2), 16 * 32 * 9 + 32 + 64),  # 4704
        ((4, 4), (8, 8), nn.ConvTranspose2d, (4, 4), (2, 2), 16 * 32 * 16 + 32 + 64),  # 8288
        ((7, 7), (4, 4), nn.Conv2d, (4, 4), (1, 1), 16 * 32 * 16 + 32 + 64),  # unpadded, kernel 1 + 3
    ],
)
def test_convreg_per_size_ratio(s_size, t_size, kind, kernel, stride, params):
    reg = ConvReg(16, 32, s_size, t_size)
    assert type(reg.conv) is kind
    assert (reg.conv.kernel_size, reg.conv.stride) == (kernel, stride)
    assert n_params(reg) == params
    assert reg(torch.randn(2, 16, *s_size)).shape == (2, 32, *t_size)


def test_convreg_refuses_a_ratio_it_has_no_conv_for():
    with pytest.raises(ConfigError, match="cannot map a 3x3 student map to a 8x8 teacher map.*hint_regressor: conv3x3"):
        build_regressor("convreg", torch.zeros(1, 16, 3, 3), torch.zeros(1, 32, 8, 8))
    reg = build_regressor("conv3x3", torch.zeros(1, 16, 3, 3), torch.zeros(1, 32, 8, 8))
    assert isinstance(reg, Conv3x3Regressor) and reg(torch.randn(2, 16, 3, 3)).shape == (2, 32, 8, 8)


def test_convreg_1x1_worked_value_with_batch_norm():
    """One channel, w = 2, b = -1 on [[1, 2], [3, 4]]: conv gives 1, 3, 5, 7; batch BN (mean 4, biased var 5)
    gives -3, -1, 1, 3 over sqrt(5); ReLU keeps 1/sqrt(5), 3/sqrt(5); MSE to zeros = (1/5 + 9/5) / 4 = 0.5."""
    reg = ConvReg(1, 1, (2, 2), (2, 2)).train()
    with torch.no_grad():
        reg.conv.weight.fill_(2.0)
        reg.conv.bias.fill_(-1.0)
    out = reg(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    root = math.sqrt(5 + 1e-5)
    assert out.flatten().tolist() == pytest.approx([0, 0, 1 / root, 3 / root], abs=1e-6)
    assert feature_mse(out, torch.zeros_like(out)).item() == pytest.approx(0.5 * 5 / (5 + 1e-5), rel=1e-6)


def test_convreg_strided_and_transposed_worked_values():
    """Eval-mode BN with fresh statistics divides by sqrt(1 + eps); biases set to 0.

    Strided: a 3x3 all-ones kernel, stride 2, padding 1, on a 4x4 map of ones covers 4, 6, 6, 9 ones.
    Transposed: one input pixel of 1 scatters the 4x4 kernel (values 0..15) with padding 1 cropped, so the
    2x2 output is its centre [[5, 6], [9, 10]]."""
    scale = 1 / math.sqrt(1 + 1e-5)
    down = ConvReg(1, 1, (4, 4), (2, 2)).eval()
    with torch.no_grad():
        down.conv.weight.fill_(1.0)
        down.conv.bias.zero_()
    assert down(torch.ones(1, 1, 4, 4)).flatten().tolist() == pytest.approx([v * scale for v in (4, 6, 6, 9)])
    up = ConvReg(1, 1, (1, 1), (2, 2)).eval()
    with torch.no_grad():
        up.conv.weight.copy_(torch.arange(16.0).reshape(1, 1, 4, 4))
        up.conv.bias.zero_()
    assert up(torch.ones(1, 1, 1, 1)).flatten().tolist() == pytest.approx([v * scale for v in (5, 6, 9, 10)])


def test_fitnet_builds_the_chosen_regressor(student_cfg, tmp_path):
    default = build_trial({**student_cfg, "method": "fitnet"}, tmp_path / "a").method
    assert isinstance(default.regressor, ConvReg) and default.regressor.conv.kernel_size == (1, 1)
    option = build_trial({**student_cfg, "method": "fitnet", "hint_regressor": "conv3x3"}, tmp_path / "b").method
    assert isinstance(option.regressor, Conv3x3Regressor)


def test_unknown_regressor_fails_before_work(student_cfg):
    with pytest.raises(ConfigError, match="hint_regressor must be one of convreg, conv3x3; got 'fc'"):
        resolve_config({**student_cfg, "method": "fitnet", "hint_regressor": "fc"})
