"""Training side of the platform: models, data, the shared loop and the distillation methods.

The method registry lives in ``trainables.methods``: ``METHODS`` maps a method name to its class
(with its ``defaults``); ``study.trainable.trainable_for(name)`` gives the Ray Tune trainable.
"""

from .methods import METHODS, Method, get_method, register_method

__all__ = ["METHODS", "Method", "get_method", "register_method"]
