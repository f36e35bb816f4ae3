"""Strategy names accepted by ``Fabric(strategy=...)`` and what each one builds.

Imported only when a name other than "auto"/"single_device" is used, so that a single-device run
imports no distributed module.
"""

from __future__ import annotations

from typing import Any

from fabric.strategies.ddp import DDPStrategy
from fabric.strategies.fsdp import FSDPStrategy

STRATEGY_NAMES: dict[str, dict[str, Any]] = {
    "ddp": {"class": DDPStrategy, "init": {"start_method": "popen"}},
    "ddp_spawn": {"class": DDPStrategy, "init": {"start_method": "spawn"}},
    "ddp_fork": {"class": DDPStrategy, "init": {"start_method": "fork"}},
    "ddp_notebook": {"class": DDPStrategy, "init": {"start_method": "fork"}},
    "ddp_find_unused_parameters_true": {
        "class": DDPStrategy,
        "init": {"start_method": "popen", "find_unused_parameters": True},
    },
    "fsdp": {"class": FSDPStrategy, "init": {}},
}
