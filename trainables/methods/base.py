"""The method contract every distillation method implements, and the registry that finds them.

A method (after mdistiller's ``Distiller``) is an ``nn.Module`` built from the student, the teacher
source and the trial config. Its registered submodules are exactly what trains and what a checkpoint
holds: the student plus any extra modules it declares (a connector, a regressor). The teacher is held
outside the module tree (see ``trainables.teacher.TeacherSource``): a method asks it for the outputs of a
batch (``self.teacher.outputs(batch)``) and says how it reads the teacher in ``teacher_plan``.

Registering (the declaration, see ``trainables.params``, is the whole contract with the rest of the
platform: validation, search space, docs and report labels come from it)::

    @register_method
    class KD(Method):
        name, label, order, source = "kd", "KD", 30, "Hinton et al. 2015"
        params = (Param("temperature", float, 4.0, gt=0, search=Float(1.0, 8.0)), ...)

        def training_step(self, batch, epoch):
            ...

Adding a method touches its own file only: ``trainables.methods`` imports every module in the package, and a
method defined anywhere else only has to be imported before a config names it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..data import Batch, Split, training_batches
from ..errors import ConfigError, unknown_choice
from ..params import Param, check_declaration, defaults_of
from ..teacher import TeacherPlan, TeacherSource


@dataclass
class StepResult:
    """One training step's output: the logits of the prediction path and the named, weighted loss terms."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]


@dataclass
class MethodContext:
    """Facts about the trial a method may need when it is built."""

    num_classes: int
    input_shape: tuple[int, int, int]
    device: torch.device
    workdir: Path
    epochs: int
    extras: dict[str, Any] = field(default_factory=dict)


class Method(nn.Module):
    """Base class: plain cross-entropy on the student, predicting with the student's own head."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    """The method's name in papers and reports (``KD``, ``SimKD``)."""
    order: ClassVar[int] = 1000
    """Row order in tables (the paper's order; methods with equal order follow by name)."""
    source: ClassVar[str] = ""
    """Where the method and its defaults come from (paper, official code)."""
    params: ClassVar[tuple[Param, ...]] = ()
    """Every config key of the method, with type, default, allowed values and search distribution."""
    search_space: ClassVar[Any] = None
    """``FIXED`` when no param is searched (a search then tunes only lr and weight_decay)."""
    defaults: ClassVar[dict[str, Any]] = {}
    """Derived from ``params`` at registration."""
    needs_teacher: ClassVar[bool] = True
    model_key: ClassVar[str] = "student"
    """Which config key names the architecture that trains (the ``teacher`` method trains ``teacher``)."""
    uses_teacher_store: ClassVar[bool] = False
    """True when the method reads the teacher only through ``teacher.outputs(batch)`` for logits (or the
    last feature map), so ``teacher_store: true`` can serve it from per-example stored outputs."""

    def __init__(
        self, student: nn.Module, teacher: TeacherSource | None, cfg: Mapping[str, Any], ctx: MethodContext
    ) -> None:
        super().__init__()
        self.student = student
        self.cfg = dict(cfg)
        self.ctx = ctx
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never trained, never saved

    # -- training -----------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, epoch: int) -> StepResult:
        """Compute the prediction-path logits and the named loss terms for one batch."""
        raise NotImplementedError

    def train_batches(self, split: Split, cfg: Mapping[str, Any], epoch: int) -> Iterator[Batch]:
        """One epoch's training batches: by default ``trainables.data.training_batches`` (a shuffled pass
        drawn from the (seed, epoch) generator alone, so a resumed epoch sees the same batches; the teacher
        stream computes ahead on the same function). CKD's group sampler overrides this."""
        return training_batches(split, cfg, epoch)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation; methods that predict through the teacher's head override this."""
        return self.student(x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates: the student's and the extra modules' (frozen ones excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- hooks ----------------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (0-based); e.g. online KD switches teacher checkpoints here."""

    def on_train_epoch_end(self, epoch: int) -> None:
        """Called after the epoch's last training step, before evaluation (e.g. CKD re-anchors its logits)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after evaluation of each epoch; e.g. the teacher method saves its trajectory here."""

    def on_train_end(self, metrics: dict[str, float]) -> None:
        """Called once after the last epoch (e.g. to export a deployable module)."""

    def bound_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """For the bound diagnostics: (prediction logits, teacher head on the student's features or None,
        why None). This default is for methods without a connector on the last map (kd, dkd, fitnet, ...):
        the teacher's head reads the student's map directly, defined only where the widths agree."""
        own_path = type(self).predict is Method.predict
        feats = self.student.forward_features(x)
        pred = self.student.forward_head(feats) if own_path else self.predict(x)
        width, teacher_width = int(feats.shape[1]), int(self.teacher.feature_channels)
        if width != teacher_width:
            reason = (
                f"method '{self.name}': the student's last feature map has {width} channels, the teacher's head "
                f"reads {teacher_width}, and the method has no connector: bound/delta1, bound/delta2 and bound/rhs "
                "are NaN"
            )
            return pred, None, reason
        return pred, self.teacher.head(feats), ""

    @classmethod
    def teacher_plan(cls, cfg: Mapping[str, Any]) -> TeacherPlan:
        """How this method reads the teacher (the loop builds the trial's teacher source from it): by default
        live outputs per batch, served from the shared store where ``teacher_store`` allows."""
        return TeacherPlan()

    def extra_state(self) -> dict[str, Any]:
        """Method state outside the module tree that a checkpoint must keep (the module tree is saved already)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    @staticmethod
    def validate_config(cfg: Mapping[str, Any]) -> None:
        """Raise ``ConfigError`` for values this method cannot use (called before any work starts)."""


def probe_stages(model: nn.Module, ctx: MethodContext, preact: bool = False) -> list[torch.Tensor]:
    """The stage maps of ``model`` (with ``preact``, its pre-activation maps) on a zero batch of the trial's input
    shape (eval mode, no gradients, the mode restored): how a method sizes its extra modules (regressors,
    connectors) before training."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.zeros(2, *ctx.input_shape, device=ctx.device)
        stages = model.forward_preact_stages(x).preact if preact else model.forward_stages(x)
    model.train(was_training)
    return stages


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: check the declaration and make ``cls`` available under ``cls.name``.

    Raises ``DeclarationError`` (a ``TypeError``) for an incomplete declaration, e.g. no search space.
    """
    check_declaration(cls)
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"method '{cls.name}' registered twice ({METHODS[cls.name].__qualname__}, {cls.__qualname__})")
    cls.defaults = defaults_of(cls.params)
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """Look a method up by name; an unknown name lists the registered ones."""
    if name not in METHODS:
        raise unknown_choice("method", name, METHODS)
    return METHODS[name]


def check_choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got '{value}'")


def check_positive(cfg: Mapping[str, Any], *keys: str, allow_zero: bool = True) -> None:
    """Raise a ConfigError naming the first key whose value is negative (or zero when not allowed)."""
    for key in keys:
        value = cfg.get(key)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got '{value}'") from None
        if number < 0 or (number == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{key} must be {bound}, got {value}")
