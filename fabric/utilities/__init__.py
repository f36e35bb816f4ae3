"""Small helpers shared by every part of the fabric. Nothing here imports a part or the facade.

The names Lightning's ``lightning.fabric.utilities`` exports are available here too; they are
loaded on first access, so that ``import fabric`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (loaded on first access)
_LAZY = {
    "AttributeDict": "fabric.utilities.attribute_dict",
    "move_data_to_device": "fabric.utilities.apply",
    "rank_zero_debug": "fabric.utilities.rank_zero",
    "rank_zero_info": "fabric.utilities.rank_zero",
    "rank_zero_only": "fabric.utilities.rank_zero",
    "rank_zero_warn": "fabric.utilities.rank_zero",
    "seed_everything": "fabric.utilities.seed",
    "pl_worker_init_function": "fabric.utilities.seed",
    "suggested_max_num_workers": "fabric.utilities.data",
    "Throughput": "fabric.utilities.throughput",
    "ThroughputMonitor": "fabric.utilities.throughput",
    "measure_flops": "fabric.utilities.throughput",
    "rank_zero_deprecation": "fabric.utilities.rank_zero",
    "disable_possible_user_warnings": "fabric.utilities.warnings",
    "is_shared_filesystem": "fabric.utilities.filesystem",
    "LightningEnum": "fabric.utilities.enums",
    "SpikeDetection": "fabric.utilities.spike",
    "TrainingSpikeException": "fabric.utilities.spike",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fabric.utilities' has no attribute {name!r}")

    return getattr(importlib.import_module(module_name), name)
