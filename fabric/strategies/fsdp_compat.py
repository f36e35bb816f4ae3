"""Lightning's and FSDP1's ``FSDPStrategy`` arguments, translated to FSDP2 or refused with what to use.

Users port code written for FSDP1 (``sharding_strategy``, ``CPUOffload``, ``MixedPrecision``,
``backward_prefetch``...). Each argument with an FSDP2 equivalent is mapped here; one without gets an
error that names the replacement. The strategy itself only sees FSDP2's terms.
"""

from __future__ import annotations

import inspect
from typing import Any

_SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")


#: FSDP1 arguments whose FSDP2 behaviour is already what they ask for: accepted and dropped
_FSDP1_NO_OPS = {"use_orig_params": True, "limit_all_gathers": True}


#: FSDP1 arguments with no FSDP2 equivalent, and what to do instead
_FSDP1_ONLY = {
    "backward_prefetch": "FSDP2 prefetches the next unit in backward by itself; remove the argument",
    "forward_prefetch": "FSDP2 prefetches by itself (explicit control: `FSDPModule.set_modules_to_forward_prefetch`)",
    "sync_module_states": "seed before creating the model (`fabric.seed_everything`) so all processes start equal",
    "param_init_fn": "create the model under `fabric.init_module(empty_init=True)`; its own init is kept",
    "device_id": "the strategy places the model on each process's device; remove the argument",
    "ignored_states": "pass `ignored_params` (a set of parameters), which FSDP2 accepts",
}


def sharding_strategy_name(value: Any) -> str:
    """``"FULL_SHARD"`` etc., from a string (any case) or torch's ``ShardingStrategy`` enum."""
    name = getattr(value, "name", value)
    if isinstance(name, str) and name.upper() in _SHARDING_STRATEGIES:
        return name.upper()
    raise ValueError(
        f"FSDPStrategy(sharding_strategy={value!r}): allowed {', '.join(_SHARDING_STRATEGIES)} (a string or "
        f"`torch.distributed.fsdp.ShardingStrategy`)."
    )


def offload_flag(value: Any) -> bool:
    """``cpu_offload``: a bool, or FSDP1's ``CPUOffload(offload_params=...)``."""
    if isinstance(value, bool):
        return value
    if hasattr(value, "offload_params"):
        return bool(value.offload_params)
    raise TypeError(
        f"FSDPStrategy(cpu_offload={value!r}): pass True/False or `CPUOffload(offload_params=...)`."
    )


def check_device_mesh(value: Any, strategy: str) -> Any:
    """``device_mesh``: ``(replicate, shard)`` sizes or a ready ``DeviceMesh``, for hybrid sharding."""
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, int) and v >= 1 for v in value):
            raise ValueError(
                f"FSDPStrategy(device_mesh={value!r}): pass two positive ints, (replicate size, shard size)."
            )
        if strategy not in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
            raise ValueError(
                f"FSDPStrategy(device_mesh={value!r}, sharding_strategy={strategy!r}): mesh sizes only apply to "
                f"hybrid sharding. Pass sharding_strategy='HYBRID_SHARD' or drop `device_mesh`."
            )
        return value
    if type(value).__name__ == "DeviceMesh":
        return value
    raise TypeError(f"FSDPStrategy(device_mesh={value!r}): pass (replicate, shard) sizes or a DeviceMesh.")


def mixed_precision_policy(value: Any) -> Any:
    """FSDP1's ``MixedPrecision`` dataclass (Lightning users pass it) as FSDP2's ``MixedPrecisionPolicy``."""
    if value is None:
        return None
    # heavy: torch.distributed.fsdp (~1 s) loads only when used
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if isinstance(value, MixedPrecisionPolicy):
        return value
    if not hasattr(value, "param_dtype"):
        raise TypeError(
            f"FSDPStrategy(mixed_precision={value!r}): pass `torch.distributed.fsdp.MixedPrecisionPolicy` or "
            f"FSDP1's `MixedPrecision`."
        )
    if getattr(value, "buffer_dtype", None) is not None:
        raise ValueError(
            f"FSDPStrategy(mixed_precision=MixedPrecision(buffer_dtype={value.buffer_dtype})): FSDP2 does not "
            f"cast buffers. Create the model in that dtype (`fabric.init_module()` under a '-true' precision) "
            f"or leave buffer_dtype unset."
        )
    if getattr(value, "keep_low_precision_grads", False):
        raise ValueError(
            "FSDPStrategy(mixed_precision=MixedPrecision(keep_low_precision_grads=True)): FSDP2 has no equivalent; "
            "gradients are reduced in `reduce_dtype` and stored in the parameters' dtype. Remove the flag."
        )
    # FSDP2 casts the inputs of each unit to param_dtype, as FSDP1 does at the root by default.
    return MixedPrecisionPolicy(param_dtype=value.param_dtype, reduce_dtype=value.reduce_dtype)


def fully_shard_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Extra ``FSDPStrategy(**kwargs)`` for ``fully_shard``; FSDP1-only ones get a clear error."""
    passed: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _FSDP1_NO_OPS and value == _FSDP1_NO_OPS[key]:
            continue
        if key in _FSDP1_ONLY:
            raise ValueError(
                f"FSDPStrategy({key}={value!r}) is an FSDP1 option with no FSDP2 equivalent: {_FSDP1_ONLY[key]}."
            )
        if key == "ignored_modules":
            passed["ignored_params"] = {p for module in value for p in module.parameters()}
            continue
        passed[key] = value
    if passed:
        # heavy: torch.distributed.fsdp (~1 s) loads only when used
        from torch.distributed.fsdp import fully_shard

        allowed = set(inspect.signature(fully_shard).parameters) - {
            "module",
            "mesh",
            "mp_policy",
            "offload_policy",
        }
        unknown = sorted(set(passed) - allowed)
        if unknown:
            raise TypeError(
                f"FSDPStrategy got {unknown}, which `fully_shard` does not accept. Allowed extra arguments: "
                f"{sorted(allowed - {'reshard_after_forward'})}."
            )
    return passed


__all__ = [
    "check_device_mesh",
    "fully_shard_kwargs",
    "mixed_precision_policy",
    "offload_flag",
    "sharding_strategy_name",
]
