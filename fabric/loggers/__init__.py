"""Loggers for ``Fabric.log``: an interface, a CSV writer and a TensorBoard writer (optional extra).

The writers load on first use (``fabric.loggers.CSVLogger``): every process of a run imports the
interface at start-up, and only a script that logs needs a writer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabric.loggers.logger import Logger

if TYPE_CHECKING:
    from fabric.loggers.csv import CSVLogger
    from fabric.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]

_LAZY = {"CSVLogger": "fabric.loggers.csv", "TensorBoardLogger": "fabric.loggers.tensorboard"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fabric.loggers' has no attribute {name!r}")
