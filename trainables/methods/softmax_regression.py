"""Shared machinery of the softmax-regression family (SRRL, SimKD, IJCKD, teacher_head).

All four map the student's last feature map through a connector into the teacher's feature space and
read it with the teacher's frozen classifier. This module holds what they share: the connector built
from probed shapes, the feature and logit MSE with their reductions, the prediction path, the views the
error-bound diagnostics need, and the deployable export (format: ``trainables.export``). It registers no method itself.

Choices where the papers leave room (see README "Methods: the softmax-regression family"):

* ``mse_reduction: mean`` (default) is ``F.mse_loss``: the mean over every element (batch x classes for
  logits, batch x C x H x W for maps), as the official SRRL/SimKD code computes it. ``batchmean`` sums over
  everything but the batch and averages over the batch (the ``||.||^2`` of the paper formulas).
* ``fm_mode: spatial`` (default, except ``srrl``) compares connector output and teacher map element-wise,
  after spatial alignment. ``spatial_mean`` (``srrl``'s default) is SRRL's official code: the connector acts
  on the student's full map and the loss compares the spatial means of its output and of the teacher's
  map (``MSE(mean_hw(conn(F_s)), mean_hw(F_t))``); the SR term reads the same connector output.
  ``pooled_input`` (accepted as ``pooled``, its earlier name) is SimKD's re-implementation of SRRL: the
  student map is globally pooled *before* the connector (which then acts on a 1x1 map), and the target is
  the pooled teacher vector. The prediction path goes through that same connector output, so training and
  evaluation agree.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..connectors import (
    CONNECTOR_DEPTHS,
    FM_MODE_ALIASES,
    FM_MODES,
    Connector,
    align_target,
    build_connector,
    canonical_fm_mode,
)
from ..errors import ConfigError
from ..export import DeployedModel, TeacherHead, describe_connector, frozen, save_exported, without_classifier
from ..params import Choice, Equals, Float, Param
from ..teacher import TeacherSource
from .base import Method, MethodContext

MSE_REDUCTIONS = ("mean", "batchmean")
EXPORT_DIR = "export"
EXPORT_FILE = "model.pt"
EXPORT_MODULE_FILE = "module.pt"
"""With ``export_module: true``: the pickled ``nn.Module`` too (needs ``weights_only=False`` to load)."""


def mse(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error: ``mean`` over every element, or ``batchmean`` (sum per example, mean over batch)."""
    if reduction == "mean":
        return F.mse_loss(prediction, target)
    if reduction == "batchmean":
        return F.mse_loss(prediction, target, reduction="sum") / prediction.shape[0]
    raise ValueError(f"mse_reduction must be one of {MSE_REDUCTIONS}, got {reduction!r}")


def ijckd_loss(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    target: torch.Tensor,
    alpha_ce: float = 1.0,
    alpha: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """IJCKD's ``alpha_ce * CE(logits_s, y) + alpha * MSE(logits_s, logits_t)`` (the ``sr`` combination).

    ``logits_s`` are the teacher head's logits on the student's connector output. With the worked
    example of ``shared/reference/loss_vectors.md`` this is 0.324459 + 0.625 = 0.949459.
    """
    return alpha_ce * F.cross_entropy(logits_s, target) + alpha * mse(logits_s, logits_t, reduction)


def probe_feature_shape(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> tuple[int, int, int]:
    """``(C, H, W)`` of ``model.forward_features`` for one input shape (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.zeros(2, *input_shape, device=device))
    model.train(was_training)
    return tuple(int(v) for v in feats.shape[1:])


class SoftmaxRegressionMethod(Method):
    """Base of the family: builds the connector and predicts through the teacher's frozen head.

    ``uses_own_head`` (SRRL) makes evaluation use the student's own classifier instead.
    ``connector_always`` False builds a connector only where channel counts differ (teacher_head).
    """

    uses_own_head: ClassVar[bool] = False
    connector_always: ClassVar[bool] = True
    has_feature_loss: ClassVar[bool] = True
    """False (teacher_head): no feature target, so the student's map is never pooled before the connector."""

    def __init__(
        self, student: nn.Module, teacher: TeacherSource | None, cfg: Mapping[str, Any], ctx: MethodContext
    ) -> None:
        super().__init__(student, teacher, cfg, ctx)
        if teacher is None:
            raise ConfigError(f"method '{self.name}' needs a teacher (teacher and teacher_checkpoint)")
        s_shape = probe_feature_shape(student, ctx.input_shape, ctx.device)
        t_shape = probe_feature_shape(teacher.model, ctx.input_shape, ctx.device)
        self.student_shape, self.teacher_shape = s_shape, t_shape
        self.fm_mode = canonical_fm_mode(str(self.cfg.get("fm_mode", "spatial")))
        self.mse_reduction = str(self.cfg.get("mse_reduction", "mean"))
        self.connector: Connector | None = None
        self.target_size = tuple(t_shape[1:])
        if self.connector_always or s_shape[0] != t_shape[0]:
            try:
                self.connector, self.target_size = build_connector(
                    s_shape,
                    t_shape,
                    int(self.cfg.get("connector_depth", 1)),
                    int(self.cfg.get("connector_factor", 2)),
                    self.fm_mode,
                )
            except ValueError as err:
                raise ConfigError(str(err)) from None
            if not self.has_feature_loss:
                self.connector.input_size = None

    # -- the two paths -----------------------------------------------------------------------------------
    def to_teacher_space(self, student_features: torch.Tensor) -> torch.Tensor:
        """Connector output (or the features themselves where no connector is needed)."""
        return self.connector(student_features) if self.connector is not None else student_features

    def feature_loss(self, mapped: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        """MSE between the connector output and the (aligned or pooled) teacher map.

        ``spatial_mean`` pools the connector output too: it keeps the student's map size, so both sides
        are compared as spatial means (``target_size`` is 1x1 there).
        """
        target = align_target(teacher_features, self.target_size)
        if self.fm_mode == "spatial_mean":
            mapped = F.adaptive_avg_pool2d(mapped, 1)
        return mse(mapped, target.to(mapped.dtype), self.mse_reduction)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_own_head:
            return self.student(x)
        return self.teacher.head(self.to_teacher_space(self.student.forward_features(x)))

    def bound_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """Prediction logits and the teacher head on the student's (connected) features, from one pass."""
        feats = self.student.forward_features(x)
        via_teacher = self.teacher.head(self.to_teacher_space(feats))
        pred = self.student.forward_head(feats) if self.uses_own_head else via_teacher
        return pred, via_teacher, ""

    # -- deployment --------------------------------------------------------------------------------------
    def deployable(self) -> nn.Module:
        """A standalone copy of the prediction path (CPU, evaluation's layout, eval mode, no gradients)."""
        if self.uses_own_head:
            model = copy.deepcopy(self.student)
        else:
            connector = copy.deepcopy(self.connector) if self.connector is not None else None
            model = DeployedModel(without_classifier(self.student), connector, TeacherHead(self.teacher.classifier()))
        return frozen(model, self._evaluation_layout())

    def _evaluation_layout(self) -> str:
        """``channels_last`` when evaluation ran so: the export keeps the layout, hence the rounding."""
        data = self.ctx.extras.get("data")
        channels_last = data is not None and data.val.memory_format == torch.channels_last
        return "channels_last" if channels_last else "contiguous_format"

    def deployable_description(self) -> dict[str, Any]:
        """How ``trainables.export.build_module`` rebuilds ``deployable()``: plain strings, numbers, lists."""
        student = str(self.cfg[self.model_key])
        layout = self._evaluation_layout()
        if self.uses_own_head:
            return {"kind": "student", "arch": student, "num_classes": int(self.ctx.num_classes),
                    "memory_format": layout}
        head = self.teacher.classifier()
        return {
            "kind": "deployed",
            "student": student,
            "teacher": str(self.cfg.get("teacher")),  # for the reader: only its head is inside
            "num_classes": int(self.ctx.num_classes),
            "connector": describe_connector(self.connector),
            "head": {"in_features": int(head.in_features), "out_features": int(head.out_features)},
            "memory_format": layout,
        }

    def export_path(self) -> Path:
        return self.ctx.workdir / EXPORT_DIR / EXPORT_FILE

    def on_train_end(self, metrics: dict[str, float]) -> None:
        if not self.cfg.get("export_model", True):
            return
        model = self.deployable()
        self._check_export(model)
        path = self.export_path()
        save_exported(model, self.deployable_description(), path)
        if self.cfg.get("export_module", False):
            tmp = path.with_name(EXPORT_MODULE_FILE + ".tmp")
            torch.save(model, tmp)
            tmp.replace(path.with_name(EXPORT_MODULE_FILE))

    def _check_export(self, model: nn.Module) -> None:
        """Warn when the export disagrees with ``predict`` on a probe batch (it never should)."""
        data = self.ctx.extras.get("data")
        if data is None:
            return
        split = data.val if len(data.val) else data.test  # val_fraction 0: no validation split
        batch = next(iter(split.batches(64, shuffle=False, augment=False)))
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            expected = self.predict(batch.x).float().cpu()
            got = model(batch.x.float().cpu().contiguous())
        self.train(was_training)
        # loose on purpose: a GPU evaluates with TF32/cuDNN kernels, the export runs on the CPU
        diff = (expected - got).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        if diff > 1e-2 * scale or (expected.argmax(1) != got.argmax(1)).float().mean().item() > 0.02:
            warnings.warn(f"exported model differs from evaluation by up to {diff:.3g} in the logits", stacklevel=2)


CONNECTOR_DEPTH = Param("connector_depth", int, 1, choices=CONNECTOR_DEPTHS, search=Choice((1, 2, 3)),
                        doc="connector layers: 1x1 | 1x1-1x1 | 1x1-3x3-1x1")
CONNECTOR_FACTOR = Param("connector_factor", int, 2, ge=1, search=Choice((1, 2, 4)),
                         when=Equals("connector_depth", 3), doc="hidden width C_t/factor (depth 3)")
FM_MODE = Param("fm_mode", str, "spatial", choices=FM_MODES, aliases=tuple(FM_MODE_ALIASES.items()),
                doc="feature MSE on whole maps (spatial), on spatial means after the connector (spatial_mean, SRRL's "
                    "code), or on pooled vectors with the student pooled first (pooled_input, SimKD's SRRL; alias "
                    "pooled)")
MSE_REDUCTION = Param("mse_reduction", str, "mean", choices=MSE_REDUCTIONS,
                      doc="mean over every element, or sum per example and mean over the batch")
EXPORT_MODEL = Param("export_model", bool, True, doc="save the deployable predictor as export/model.pt")
EXPORT_MODULE = Param("export_module", bool, False,
                      doc="also save the pickled module as export/module.pt (load_exported needs only model.pt)")
ALPHA_CE = Param("alpha_ce", float, 1.0, ge=0, doc="weight of the cross-entropy")
ALPHA = Param("alpha", float, 1.0, ge=0, search=Float(0.1, 10.0, log=True), doc="softmax-regression (logit MSE) weight")
BETA = Param("beta", float, 1.0, ge=0, search=Float(0.1, 10.0, log=True), doc="feature-matching weight")
CONNECTOR_PARAMS = (CONNECTOR_DEPTH, CONNECTOR_FACTOR)
OUTPUT_PARAMS = (FM_MODE, MSE_REDUCTION, EXPORT_MODEL, EXPORT_MODULE)
"""Keys the family shares; each method lists them in its ``params`` (searched ones in search order)."""
