"""Connectors: the trainable map from the student's last feature map into the teacher's feature space.

SimKD, SRRL and IJCKD feed the connector's output to the teacher's frozen classifier, so the connector
has to produce ``C_teacher`` channels. Three depths, as in the IJCKD paper's Table 2:

* depth 1: 1x1 conv -> BN -> ReLU
* depth 2: 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> ReLU
* depth 3: 1x1 conv -> BN -> ReLU -> 3x3 conv (pad 1) -> BN -> ReLU -> 1x1 conv -> BN -> ReLU,
  hidden width ``C_teacher // factor`` (SimKD's projector; ``factor`` 2 by default)

Convolutions carry no bias (a BN follows each one). Depth 2 keeps ``C_teacher`` channels in its hidden
layer (the paper gives no reduction for it).

Spatial alignment: when the two maps differ in height or width, both are brought to the smaller size
(per dimension) by adaptive average pooling. The *student* map is pooled before the connector when it is
the larger one (as SimKD's code does; it also makes the 3x3 conv cheaper), and the *teacher* map is pooled
(only as the feature-loss target) when it is the larger one. The prediction path pools globally
afterwards, so alignment changes the feature loss, never which logits the teacher's head can produce.

``fm_mode`` says what the feature loss compares (``build_connector`` returns the compared size):
``spatial`` the aligned maps; ``spatial_mean`` (SRRL's official code) the spatial means of the connector
output on the student's full map and of the teacher's map, sizes never aligned; ``pooled_input`` (SimKD's
re-implementation of SRRL) the connector output on the globally pooled student map and the pooled teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONNECTOR_DEPTHS = (1, 2, 3)
FM_MODES = ("spatial", "spatial_mean", "pooled_input")
FM_MODE_ALIASES = {"pooled": "pooled_input"}
"""Earlier names still accepted: ``pooled`` was ``pooled_input`` before SRRL's own reading was added."""


def canonical_fm_mode(mode: str) -> str:
    """``mode`` under its current name (an alias resolved; anything else returned as it is)."""
    return FM_MODE_ALIASES.get(mode, mode)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def connector_layers(in_channels: int, out_channels: int, depth: int = 1, factor: int = 2) -> nn.Sequential:
    """The conv/BN/ReLU stack of a depth-``depth`` connector (see the module docstring)."""
    if depth not in CONNECTOR_DEPTHS:
        raise ValueError(f"connector depth must be one of {CONNECTOR_DEPTHS}, got {depth}")
    if depth == 1:
        layers = _conv_bn_relu(in_channels, out_channels, 1)
    elif depth == 2:
        layers = _conv_bn_relu(in_channels, out_channels, 1) + _conv_bn_relu(out_channels, out_channels, 1)
    else:
        hidden = hidden_width(out_channels, factor)
        layers = (
            _conv_bn_relu(in_channels, hidden, 1)
            + _conv_bn_relu(hidden, hidden, 3)
            + _conv_bn_relu(hidden, out_channels, 1)
        )
    return nn.Sequential(*layers)


def hidden_width(out_channels: int, factor: int) -> int:
    """``C_teacher // factor``; a factor that leaves no channel is an error, not a silent 0."""
    factor = int(factor)
    if factor < 1 or out_channels // factor < 1:
        raise ValueError(f"connector_factor {factor} leaves no hidden channel for a {out_channels}-channel teacher")
    return out_channels // factor


class Connector(nn.Module):
    """Student feature map (B, C_s, H, W) -> teacher-space map (B, C_t, H', W').

    ``input_size`` (optional) is the spatial size the student's map is average-pooled to before the
    convolutions: the smaller teacher size in ``spatial`` mode when the student's map is larger, ``(1, 1)``
    in ``pooled_input`` mode. It is part of the module so an exported model pools exactly as training did.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 1,
        factor: int = 2,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.depth = int(depth)
        self.factor = int(factor)
        self.input_size = tuple(int(v) for v in input_size) if input_size is not None else None
        self.layers = connector_layers(in_channels, out_channels, depth, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.adaptive_avg_pool2d(x, self.input_size)
        return self.layers(x)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, depth={self.depth}, input_size={self.input_size}"


def aligned_size(student_hw: tuple[int, int], teacher_hw: tuple[int, int]) -> tuple[int, int]:
    """The common spatial size: the smaller of the two, per dimension."""
    return (min(student_hw[0], teacher_hw[0]), min(student_hw[1], teacher_hw[1]))


def connector_input_size(
    student_hw: tuple[int, int], teacher_hw: tuple[int, int], fm_mode: str = "spatial"
) -> tuple[int, int] | None:
    """Where the student's map must be pooled before the connector (None: leave it as it is)."""
    fm_mode = canonical_fm_mode(fm_mode)
    if fm_mode == "pooled_input":
        return (1, 1)
    if fm_mode == "spatial_mean":
        return None
    if fm_mode != "spatial":
        raise ValueError(f"fm_mode must be one of {FM_MODES}, got {fm_mode!r}")
    target = aligned_size(student_hw, teacher_hw)
    return None if tuple(student_hw) == target else target


def align_target(teacher_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool the teacher's map down to ``size`` when it is larger (the feature-loss target)."""
    if tuple(teacher_map.shape[-2:]) == tuple(size):
        return teacher_map
    return F.adaptive_avg_pool2d(teacher_map, size)


def build_connector(
    student_shape: tuple[int, int, int],
    teacher_shape: tuple[int, int, int],
    depth: int = 1,
    factor: int = 2,
    fm_mode: str = "spatial",
) -> tuple[Connector, tuple[int, int]]:
    """A connector for maps of shape ``(C, H, W)``, and the spatial size the feature loss compares at."""
    c_s, h_s, w_s = student_shape
    c_t, h_t, w_t = teacher_shape
    input_size = connector_input_size((h_s, w_s), (h_t, w_t), fm_mode)
    connector = Connector(c_s, c_t, depth, factor, input_size)
    pooled = canonical_fm_mode(fm_mode) in ("pooled_input", "spatial_mean")
    target = (1, 1) if pooled else aligned_size((h_s, w_s), (h_t, w_t))
    return connector, target
