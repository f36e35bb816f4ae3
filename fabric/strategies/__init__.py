"""Strategies: how models, optimizers, collectives and checkpoints work for one engine each.

Multi-process strategies are imported on first use, so ``import fabric`` stays free of
``torch.distributed`` set-up for single-device runs.
"""

from typing import Any

from fabric.strategies.single_device import SingleDeviceStrategy
from fabric.strategies.strategy import BackwardSyncControl, Strategy

__all__ = [
    "BackwardSyncControl",
    "DDPStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "ModelParallelStrategy",
    "SingleDeviceStrategy",
    "Strategy",
]


def __getattr__(name: str) -> Any:
    if name == "DDPStrategy":
        from fabric.strategies.ddp import DDPStrategy

        return DDPStrategy
    if name == "ModelParallelStrategy":
        from fabric.strategies.model_parallel import ModelParallelStrategy

        return ModelParallelStrategy
    if name == "DeepSpeedStrategy":
        from fabric.strategies.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy
    if name == "FSDPStrategy":
        from fabric.strategies.fsdp import FSDPStrategy

        return FSDPStrategy
    raise AttributeError(f"module 'fabric.strategies' has no attribute {name!r}")
