"""Lightning's ``accelerators.registry``: the accelerator registry and its legacy class-scanning helper."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from fabric.accelerators.accelerator import Accelerator
from fabric.utilities.registry import AcceleratorRegistry

__all__ = ["AcceleratorRegistry", "call_register_accelerators"]


def call_register_accelerators(registry: Any, base_module: str) -> None:
    """Let every ``Accelerator`` subclass in ``base_module`` that has a ``register_accelerators`` hook add itself.

    Lightning keeps this for third-party packages that register their accelerators this way; fabric's
    built-in accelerators are registered by name in :mod:`fabric.accelerators`.
    """

    module = importlib.import_module(base_module)
    for _, member in inspect.getmembers(module, inspect.isclass):
        if issubclass(member, Accelerator) and member is not Accelerator:
            hook = getattr(member, "register_accelerators", None)
            if callable(hook):
                hook(registry)
