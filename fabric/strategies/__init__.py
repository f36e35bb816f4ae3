"""Strategies: how models, optimizers, collectives and checkpoints work for one engine each.

Multi-process strategies (and their modules, e.g. ``fabric.strategies.fsdp``) are imported on first
use, so ``import fabric`` stays free of ``torch.distributed`` set-up for single-device runs.
"""

import importlib
from typing import Any

from fabric.strategies.single_device import SingleDeviceStrategy
from fabric.strategies.strategy import BackwardSyncControl, Strategy

#: public name -> module that defines it, imported when the name is first used
_LAZY = {
    "DDPStrategy": "ddp",
    "DataParallelStrategy": "dp",
    "FSDPStrategy": "fsdp",
    "ModelParallelStrategy": "model_parallel",
    "ParallelStrategy": "parallel",
    "STRATEGY_REGISTRY": "registry",
    "DeepSpeedStrategy": "deepspeed",
    # the XLA modules import torch-xla only when a run is set up
    "SingleXLAStrategy": "xla_single",
    "SingleDeviceXLAStrategy": "single_xla",
    "SingleTPUStrategy": "single_tpu",  # deprecated (fabric/_graveyard.py)
    "XLAStrategy": "xla",
    "XLAFSDPStrategy": "xla_fsdp",
}
_SUBMODULES = (
    "ddp",
    "deepspeed",
    "dp",
    "launchers",
    "fsdp",
    "model_parallel",
    "parallel",
    "registry",
    "single_device",
    "single_tpu",
    "single_xla",
    "strategy",
    "xla",
    "xla_common",
    "xla_fsdp",
    "xla_single",
)

__all__ = [
    "STRATEGY_REGISTRY",
    "BackwardSyncControl",
    "DDPStrategy",
    "DataParallelStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "ModelParallelStrategy",
    "ParallelStrategy",
    "SingleDeviceStrategy",
    "SingleDeviceXLAStrategy",
    "SingleXLAStrategy",
    "Strategy",
    "XLAFSDPStrategy",
    "XLAStrategy",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"fabric.strategies.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"fabric.strategies.{name}")
    raise AttributeError(f"module 'fabric.strategies' has no attribute {name!r}")
