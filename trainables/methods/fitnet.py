"""``fitnet``: FitNets hints (Romero et al., 2015) in the single-stage form of RepDistiller/mdistiller.

The original trains the hint first and the classifier second; the KD benchmarks the tables come from
train both at once (``ce_weight * CE + hint_weight * MSE(regressor(f_s), f_t)``), and so does this.
The hint sits at the middle stage of each network (``hint_stage: middle``) or at a given stage index.
The regressor (``hint_regressor``) is by default those benchmarks' ``ConvReg`` (see ``convreg_conv``);
``conv3x3`` keeps this project's earlier 3x3 conv with resizing, which also connects any size ratio.

Defaults are the benchmarks' FitNet setting: CE weight 1, hint weight 100, the middle stage (RepDistiller's
``--distill hint -r 1 -a 0 -b 100`` with ``hint_layer 2``; mdistiller's ``CFG.FITNET``: CE 1.0, FEAT 100.0,
HINT_LAYER 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch
from ..errors import ConfigError
from ..losses import feature_mse
from ..params import Float, Param
from .base import Method, MethodContext, StepResult, probe_stages, register_method

HINT_REGRESSORS = ("convreg", "conv3x3")


def convreg_conv(in_channels: int, out_channels: int, in_size: tuple[int, int], out_size: tuple[int, int]) -> nn.Module:
    """The convolution of RepDistiller's/mdistiller's FitNet regressor (``ConvReg``) for two map sizes.

    Student map twice the teacher's: 3x3 conv, stride 2, padding 1. Half the teacher's: 4x4 transposed
    conv, stride 2, padding 1. Otherwise larger or equal: an unpadded conv whose kernel is
    ``1 + size difference`` per dimension (1x1 for equal sizes). Biases are kept, as in that code.
    A smaller student map of another ratio has no ``ConvReg``: ValueError.
    """
    (h_s, w_s), (h_t, w_t) = in_size, out_size
    if (h_s, w_s) == (2 * h_t, 2 * w_t):
        return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    if (2 * h_s, 2 * w_s) == (h_t, w_t):
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    if h_s >= h_t and w_s >= w_t:
        return nn.Conv2d(in_channels, out_channels, (1 + h_s - h_t, 1 + w_s - w_t))
    raise ValueError(
        f"hint_regressor convreg cannot map a {h_s}x{w_s} student map to a {h_t}x{w_t} teacher map "
        "(it handles larger or equal maps and half-size ones); use hint_regressor: conv3x3"
    )


class ConvReg(nn.Module):
    """FitNet's regressor in the KD benchmarks' form: ``convreg_conv`` -> BN -> ReLU (the default)."""

    def __init__(
        self, in_channels: int, out_channels: int, in_size: tuple[int, int], out_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.conv = convreg_conv(in_channels, out_channels, tuple(in_size), tuple(out_size))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Conv3x3Regressor(nn.Module):
    """``hint_regressor: conv3x3``: 3x3 conv (pad 1, no bias) + BN + ReLU, then resize to the teacher's map.

    The project's earlier regressor, kept as an option. When the maps differ in size the output is
    average-pooled down, or bilinearly upsampled, to the teacher's size after the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, out_size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.out_size = tuple(out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        if tuple(x.shape[-2:]) == self.out_size:
            return x
        if x.shape[-1] > self.out_size[-1]:
            return F.adaptive_avg_pool2d(x, self.out_size)
        return F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)


def build_regressor(kind: str, student_map: torch.Tensor, teacher_map: torch.Tensor) -> nn.Module:
    """The hint regressor ``kind`` from the student's to the teacher's map (probed tensors, B x C x H x W)."""
    c_s, c_t = student_map.shape[1], teacher_map.shape[1]
    s_size, t_size = tuple(student_map.shape[-2:]), tuple(teacher_map.shape[-2:])
    if kind == "conv3x3":
        return Conv3x3Regressor(c_s, c_t, t_size)
    try:
        return ConvReg(c_s, c_t, s_size, t_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def pick_stage(stages: list[torch.Tensor], choice: Any) -> int:
    """Index of the hint stage: 'middle' or an integer (negative counts from the end)."""
    if choice == "middle":
        return len(stages) // 2
    index = int(choice)
    if not -len(stages) <= index < len(stages):
        raise ConfigError(f"hint_stage {choice} out of range: this network has {len(stages)} stages")
    return index % len(stages)


@register_method
class FitNet(Method):
    name, label, order = "fitnet", "FitNet", 20
    source = "Romero et al., ICLR 2015; single-stage form and defaults (CE 1, hint 100) of RepDistiller/mdistiller"
    params = (
        Param("hint_weight", float, 100.0, ge=0, search=Float(10.0, 1000.0, log=True), doc="weight of the hint MSE"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy"),
        Param("hint_stage", (Literal["middle"], int), "middle", allowed="'middle' or an integer",
              doc="stage of both networks the hint sits at (negative counts from the end)"),
        Param("hint_regressor", str, "convreg", choices=HINT_REGRESSORS,
              doc="RepDistiller's ConvReg (1x1, strided or transposed conv by map size) or a 3x3 conv"),
    )

    def __init__(self, student: nn.Module, teacher: Any, cfg: Mapping[str, Any], ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        s_stages = probe_stages(student, ctx)
        t_stages = probe_stages(teacher.model, ctx) if teacher is not None else None
        self.s_index = pick_stage(s_stages, cfg["hint_stage"])
        self.t_index = pick_stage(t_stages, cfg["hint_stage"])
        s_map, t_map = s_stages[self.s_index], t_stages[self.t_index]
        self.regressor = build_regressor(str(cfg.get("hint_regressor", "convreg")), s_map, t_map)

    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        stages = self.student.forward_stages(batch.x)
        logits = self.student.forward_head(stages[-1])
        teacher_out = self.teacher.outputs(batch, want="stages")
        hint = feature_mse(self.regressor(stages[self.s_index]), teacher_out.stages[self.t_index])
        losses = {
            "ce": self.cfg["ce_weight"] * F.cross_entropy(logits, batch.y),
            "hint": self.cfg["hint_weight"] * hint,
        }
        return StepResult(logits, losses)
