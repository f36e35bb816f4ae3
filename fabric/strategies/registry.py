"""Strategy names accepted by ``Fabric(strategy=...)`` and what each one builds.

Each name maps to the import path of its class, imported only when that name is chosen: ``"ddp"``
imports the DDP strategy and never the FSDP, DeepSpeed or XLA modules, which would cost every process
of the run its start-up time (this module imports no strategy and no torch).
"""

from __future__ import annotations

from typing import Any

from fabric.utilities.registry import StrategyRegistry

_DDP = "fabric.strategies.ddp:DDPStrategy"
_DEEPSPEED = "fabric.strategies.deepspeed:DeepSpeedStrategy"
_FSDP = "fabric.strategies.fsdp:FSDPStrategy"
_XLA = "fabric.strategies.xla:XLAStrategy"
_XLA_FSDP = "fabric.strategies.xla_fsdp:XLAFSDPStrategy"
_SINGLE_XLA = "fabric.strategies.xla_single:SingleXLAStrategy"

#: name -> {"class": "module:Class" import path, "init": constructor arguments}
STRATEGY_NAMES: dict[str, dict[str, Any]] = {
    "ddp": {"class": _DDP, "init": {"start_method": "popen"}},
    "ddp_spawn": {"class": _DDP, "init": {"start_method": "spawn"}},
    "ddp_fork": {"class": _DDP, "init": {"start_method": "fork"}},
    "ddp_notebook": {"class": _DDP, "init": {"start_method": "fork"}},
    "ddp_find_unused_parameters_true": {
        "class": _DDP,
        "init": {"start_method": "popen", "find_unused_parameters": True},
    },
    "ddp_spawn_find_unused_parameters_true": {
        "class": _DDP,
        "init": {"start_method": "spawn", "find_unused_parameters": True},
    },
    "ddp_fork_find_unused_parameters_true": {
        "class": _DDP,
        "init": {"start_method": "fork", "find_unused_parameters": True},
    },
    "ddp_notebook_find_unused_parameters_true": {
        "class": _DDP,
        "init": {"start_method": "fork", "find_unused_parameters": True},
    },
    "dp": {"class": "fabric.strategies.dp:DataParallelStrategy", "init": {}},
    "fsdp": {"class": _FSDP, "init": {}},
    # DeepSpeed: the class imports no deepspeed module until a process sets it up
    "deepspeed": {"class": _DEEPSPEED, "init": {}},
    "deepspeed_stage_1": {"class": _DEEPSPEED, "init": {"stage": 1}},
    "deepspeed_stage_1_offload": {"class": _DEEPSPEED, "init": {"stage": 1, "offload_optimizer": True}},
    "deepspeed_stage_2": {"class": _DEEPSPEED, "init": {"stage": 2}},
    "deepspeed_stage_2_offload": {
        "class": _DEEPSPEED,
        "init": {"stage": 2, "offload_optimizer": True},
    },
    "deepspeed_stage_3": {"class": _DEEPSPEED, "init": {"stage": 3}},
    "deepspeed_stage_3_offload": {
        "class": _DEEPSPEED,
        "init": {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
    },
    "deepspeed_stage_3_offload_nvme": {
        "class": _DEEPSPEED,
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
    "single_xla": {"class": _SINGLE_XLA, "init": {}},
    "xla": {"class": _XLA, "init": {}},
    "xla_fsdp": {"class": _XLA_FSDP, "init": {}},
    "fsdp_cpu_offload": {"class": _FSDP, "init": {"cpu_offload": True}},
    # Lightning's deprecated name: warns, then as "single_xla" (fabric/_graveyard.py)
    "single_tpu": {"class": "fabric._graveyard:SingleTPUStrategy", "init": {}},
}

#: Lightning's ``STRATEGY_REGISTRY``: the names above, plus any a user registers with ``register(...)``.
STRATEGY_REGISTRY = StrategyRegistry()
for _name, _entry in STRATEGY_NAMES.items():
    STRATEGY_REGISTRY.register_lazy(_name, _entry["class"], **_entry["init"])
