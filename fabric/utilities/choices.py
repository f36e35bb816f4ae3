"""The names the arguments accept, in a module that imports nothing.

``fabric run`` validates its options against these before it starts any process, and its launcher
process never imports torch (see ``fabric.launchers.direct``); the connector uses the same names.
"""

from __future__ import annotations

from typing import Any

PRECISION_ALIASES: dict[Any, str] = {
    64: "64-true",
    "64": "64-true",
    32: "32-true",
    "32": "32-true",
    16: "16-mixed",
    "16": "16-mixed",
    "bf16": "bf16-mixed",
}
PRECISIONS = ("32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
#: the precisions XLA devices support
XLA_PRECISIONS = ("32-true", "bf16-true", "bf16-mixed")
ACCELERATOR_NAMES = ("auto", "cpu", "cuda", "gpu", "mps", "tpu", "xla")
#: the built-in strategy names, in the order of ``fabric.strategies.registry.STRATEGY_NAMES`` (a test
#: keeps the two equal)
STRATEGY_NAMES = (
    "ddp",
    "ddp_spawn",
    "ddp_fork",
    "ddp_notebook",
    "ddp_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_true",
    "ddp_notebook_find_unused_parameters_true",
    "dp",
    "fsdp",
    "deepspeed",
    "deepspeed_stage_1",
    "deepspeed_stage_1_offload",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme",
    "single_xla",
    "xla",
    "xla_fsdp",
    "fsdp_cpu_offload",
    "single_tpu",
)
