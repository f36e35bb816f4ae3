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
    "SingleXLAStrategy",
    "Strategy",
    "XLAFSDPStrategy",
    "XLAStrategy",
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
    if name in ("SingleXLAStrategy", "XLAStrategy", "XLAFSDPStrategy"):
        # these modules import torch-xla only when a run is set up
        from fabric.strategies import xla, xla_fsdp, xla_single

        return {
            "SingleXLAStrategy": xla_single.SingleXLAStrategy,
            "XLAStrategy": xla.XLAStrategy,
            "XLAFSDPStrategy": xla_fsdp.XLAFSDPStrategy,
        }[name]
    raise AttributeError(f"module 'fabric.strategies' has no attribute {name!r}")
