"""``fitnet``: FitNets hints (Romero et al., 2015) in the single-stage form of RepDistiller/mdistiller.

The original trains the hint first and the classifier second; the KD benchmarks the tables come from
train both at once (``ce_weight * CE + hint_weight * MSE(regressor(f_s), f_t)``), and so does this.
The hint sits at the middle stage of each network (``hint_stage: middle``) or at a given stage index.
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
from .base import Method, MethodContext, StepResult, register_method


class HintRegressor(nn.Module):
    """3x3 conv + BN + ReLU from the student's hint channels to the teacher's; spatial size matched.

    When the maps differ in size the student's map is average-pooled down, or bilinearly upsampled, to
    the teacher's size after the convolution.
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
    source = "Romero et al., ICLR 2015; single-stage form of RepDistiller/mdistiller"
    params = (
        Param("hint_weight", float, 100.0, ge=0, search=Float(10.0, 1000.0, log=True), doc="weight of the hint MSE"),
        Param("ce_weight", float, 1.0, ge=0, doc="weight of the cross-entropy"),
        Param("hint_stage", (Literal["middle"], int), "middle", allowed="'middle' or an integer",
              doc="stage of both networks the hint sits at (negative counts from the end)"),
    )

    def __init__(self, student: nn.Module, teacher: Any, cfg: Mapping[str, Any], ctx: MethodContext) -> None:
        super().__init__(student, teacher, cfg, ctx)
        probe = torch.zeros(2, *ctx.input_shape, device=ctx.device)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            s_stages = student.forward_stages(probe)
        student.train(was_training)
        t_stages = teacher.model.forward_stages(probe) if teacher is not None else None
        self.s_index = pick_stage(s_stages, cfg["hint_stage"])
        self.t_index = pick_stage(t_stages, cfg["hint_stage"])
        s_map, t_map = s_stages[self.s_index], t_stages[self.t_index]
        self.regressor = HintRegressor(s_map.shape[1], t_map.shape[1], tuple(t_map.shape[-2:]))

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
