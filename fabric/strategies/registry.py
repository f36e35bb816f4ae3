"""Strategy names accepted by ``Fabric(strategy=...)`` and what each one builds.

Imported only when a name other than "auto"/"single_device" is used, so that a single-device run
imports no distributed module.
"""

from __future__ import annotations

from typing import Any

from fabric.strategies.ddp import DDPStrategy
from fabric.strategies.deepspeed import DeepSpeedStrategy
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
    # DeepSpeed: the class imports no deepspeed module until a process sets it up
    "deepspeed": {"class": DeepSpeedStrategy, "init": {}},
    "deepspeed_stage_1": {"class": DeepSpeedStrategy, "init": {"stage": 1}},
    "deepspeed_stage_2": {"class": DeepSpeedStrategy, "init": {"stage": 2}},
    "deepspeed_stage_2_offload": {
        "class": DeepSpeedStrategy,
        "init": {"stage": 2, "offload_optimizer": True},
    },
    "deepspeed_stage_3": {"class": DeepSpeedStrategy, "init": {"stage": 3}},
    "deepspeed_stage_3_offload": {
        "class": DeepSpeedStrategy,
        "init": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    },
    "deepspeed_stage_3_offload_nvme": {
        "class": DeepSpeedStrategy,
        "init": {
            "stage": 3,
            "offload_optimizer": True,
            "offload_parameters": True,
            "remote_device": "nvme",
            "offload_params_device": "nvme",
            "offload_optimizer_device": "nvme",
        },
    },
}
