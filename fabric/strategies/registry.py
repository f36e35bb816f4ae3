"""Strategy names accepted by ``Fabric(strategy=...)`` and what each one builds.

Imported only when a name other than "auto"/"single_device" is used, so that a single-device run
imports no distributed module.
"""

from __future__ import annotations

from typing import Any

from fabric.strategies.ddp import DDPStrategy
from fabric.strategies.deepspeed import DeepSpeedStrategy
from fabric.strategies.fsdp import FSDPStrategy
from fabric.strategies.xla import XLAStrategy
from fabric.strategies.xla_fsdp import XLAFSDPStrategy
from fabric.strategies.xla_single import SingleXLAStrategy
from fabric.utilities.registry import StrategyRegistry

STRATEGY_NAMES: dict[str, dict[str, Any]] = {
    "ddp": {"class": DDPStrategy, "init": {"start_method": "popen"}},
    "ddp_spawn": {"class": DDPStrategy, "init": {"start_method": "spawn"}},
    "ddp_fork": {"class": DDPStrategy, "init": {"start_method": "fork"}},
    "ddp_notebook": {"class": DDPStrategy, "init": {"start_method": "fork"}},
    "ddp_find_unused_parameters_true": {
        "class": DDPStrategy,
        "init": {"start_method": "popen", "find_unused_parameters": True},
    },
    "ddp_spawn_find_unused_parameters_true": {
        "class": DDPStrategy,
        "init": {"start_method": "spawn", "find_unused_parameters": True},
    },
    "ddp_fork_find_unused_parameters_true": {
        "class": DDPStrategy,
        "init": {"start_method": "fork", "find_unused_parameters": True},
    },
    "ddp_notebook_find_unused_parameters_true": {
        "class": DDPStrategy,
        "init": {"start_method": "fork", "find_unused_parameters": True},
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
    # XLA (torch-xla is imported only when one of these is set up)
    "single_xla": {"class": SingleXLAStrategy, "init": {}},
    "xla": {"class": XLAStrategy, "init": {}},
    "xla_fsdp": {"class": XLAFSDPStrategy, "init": {}},
    "fsdp_cpu_offload": {"class": FSDPStrategy, "init": {"cpu_offload": True}},
}

#: Lightning's ``STRATEGY_REGISTRY``: the names above, plus any a user registers with ``register(...)``.
STRATEGY_REGISTRY = StrategyRegistry()
for _name, _entry in STRATEGY_NAMES.items():
    STRATEGY_REGISTRY.register(_name, _entry["class"], **_entry["init"])
