"""Strategies: how models, optimizers, collectives and checkpoints work for one engine each.

Multi-process strategies are imported on first use, so ``import fabric`` stays free of
``torch.distributed`` set-up for single-device runs.
"""

from typing import Any

from fabric.strategies.single_device import SingleDeviceStrategy
from fabric.strategies.strategy import BackwardSyncControl, Strategy

__all__ = ["BackwardSyncControl", "DDPStrategy", "SingleDeviceStrategy", "Strategy"]


def __getattr__(name: str) -> Any:
    if name == "DDPStrategy":
        from fabric.strategies.ddp import DDPStrategy

        return DDPStrategy
    raise AttributeError(f"module 'fabric.strategies' has no attribute {name!r}")
