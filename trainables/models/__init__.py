"""Model zoo: every architecture behind one registry and one forward contract (see ``base.ZooModel``).

Importing the architecture modules below fills the registry as a side effect.
"""

# Architecture modules register their models on import.
from . import (  # noqa: F401
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_resnet50,
    cifar_shufflenetv1,
    cifar_shufflenetv2,
    cifar_vgg,
    cifar_wrn,
    imagenet_mobilenetv1,
    imagenet_resnet,
)
from .base import PreactStages, ZooModel
from .checkpoint import CheckpointMismatchError, load_checkpoint
from .registry import create, is_imagenet_model, list_models, model_class, models_with, register_model

__all__ = [
    "CheckpointMismatchError",
    "PreactStages",
    "ZooModel",
    "create",
    "is_imagenet_model",
    "list_models",
    "load_checkpoint",
    "model_class",
    "models_with",
    "register_model",
]
