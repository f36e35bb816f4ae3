"""DeepSpeed's config from Lightning-style ``DeepSpeedStrategy`` arguments, and a user's config merged in.

Kept apart from the strategy because it is pure data handling (no engine, no process group): the
arguments are checked, turned into DeepSpeed's JSON sections as Lightning maps them, and merged with
a user's config, where the config wins and a changed argument that contradicts it is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from fabric.utilities.types import PathLike

LOSS_SCALE_DEFAULTS = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}
_DEVICES = ("cpu", "nvme")


def check_arguments(arguments: dict[str, Any]) -> None:
    if arguments["stage"] not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeedStrategy(stage={arguments['stage']!r}): allowed 0, 1, 2, 3.")
    for name in ("offload_params_device", "offload_optimizer_device"):
        if arguments[name] not in _DEVICES:
            raise ValueError(f"DeepSpeedStrategy({name}={arguments[name]!r}): allowed 'cpu' or 'nvme'.")
    if arguments["remote_device"] not in (None, *_DEVICES):
        raise ValueError(
            f"DeepSpeedStrategy(remote_device={arguments['remote_device']!r}): allowed None, 'cpu' or 'nvme'."
        )
    if arguments["offload_parameters"] and arguments["stage"] != 3:
        raise ValueError(
            f"DeepSpeedStrategy(offload_parameters=True, stage={arguments['stage']}): parameters are offloaded only "
            f"in ZeRO stage 3. Pass stage=3, or offload_optimizer=True alone."
        )
    if arguments["offload_optimizer"] and arguments["stage"] == 0:
        raise ValueError(
            "DeepSpeedStrategy(offload_optimizer=True, stage=0): offload needs ZeRO (stage 1, 2 or 3)."
        )


def read_config(config: PathLike | dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config)))
    if isinstance(config, (str, os.PathLike)):
        if not os.path.isfile(config):
            raise FileNotFoundError(
                f"DeepSpeedStrategy(config={os.fspath(config)!r}): no such file. Pass a dict or the path of a "
                f"DeepSpeed JSON config."
            )
        with open(config) as file:
            loaded = json.load(file)
        if not isinstance(loaded, dict):
            raise ValueError(
                f"DeepSpeedStrategy(config={os.fspath(config)!r}): the JSON must hold an object."
            )
        return loaded
    raise TypeError(
        f"DeepSpeedStrategy(config={config!r}): pass a dict or the path of a JSON file, got {type(config).__name__}."
    )


def config_from_arguments(a: dict[str, Any]) -> dict[str, Any]:
    """The config the arguments describe (Lightning's mapping of the same arguments)."""
    zero: dict[str, Any] = {
        "stage": a["stage"],
        "contiguous_gradients": a["contiguous_gradients"],
        "overlap_comm": a["overlap_comm"],
        "allgather_partitions": a["allgather_partitions"],
        "reduce_scatter": a["reduce_scatter"],
        "allgather_bucket_size": a["allgather_bucket_size"],
        "reduce_bucket_size": a["reduce_bucket_size"],
        "sub_group_size": a["sub_group_size"],
    }
    if a["offload_optimizer"]:
        zero["offload_optimizer"] = {
            "device": a["offload_optimizer_device"],
            "nvme_path": a["nvme_path"],
            "buffer_count": a["optimizer_buffer_count"],
            "pin_memory": a["pin_memory"],
        }
    if a["offload_parameters"]:
        zero["offload_param"] = {
            "device": a["offload_params_device"],
            "nvme_path": a["nvme_path"],
            "buffer_count": a["params_buffer_count"],
            "buffer_size": a["params_buffer_size"],
            "max_in_cpu": a["max_in_cpu"],
            "pin_memory": a["pin_memory"],
        }
    config: dict[str, Any] = {
        "zero_allow_untested_optimizer": a["zero_allow_untested_optimizer"],
        "train_micro_batch_size_per_gpu": a["logging_batch_size_per_gpu"],
        "__loss_scale__": {key: a[key] for key in LOSS_SCALE_DEFAULTS},
    }
    if a["zero_optimization"]:
        config["zero_optimization"] = zero
    return config


#: ZeRO-3's buffer sizes (in elements) when a CPU trains without a user config. DeepSpeed's own
#: defaults are sized for GPUs: a 500M-element gradient bucket, 50M elements prefetched, 1G live
#: parameters, one optimizer sub-group, and no parameter released if it is used again within 1G
#: elements, which from the second step on keeps the whole model gathered from forward into backward.
#: On a CPU all of that is resident memory. Measured on 2 ranks (benchmarks/README.md, "DeepSpeed"):
#: per-rank peak 424 -> 317 MB for a 48 MB model; steps 1.01-1.15x (two loaded runs), the cost of
#: gathering each layer again in backward, as FSDP's reshard after forward does. Only entries the user
#: did not set are filled; see :func:`add_cpu_zero3_sizes`. ``sub_group_size`` stays at its default: a
#: small one did not lower the peak. (It was also blamed for async checkpoints that differed from sync
#: ones; that was the test comparing NaN with ``torch.equal``: ZeRO-3 leaves the last rank's partition
#: padding uninitialized. Async checkpoints with several sub-groups are tested in test_async_save.py.)
CPU_ZERO3_SIZES: dict[str, int] = {
    "reduce_bucket_size": 1_000_000,
    "stage3_prefetch_bucket_size": 1_000_000,
    "stage3_max_live_parameters": 2_000_000,
    "stage3_max_reuse_distance": 1_000_000,
}


def add_cpu_zero3_sizes(config: dict[str, Any], changed_arguments: set[str] | None) -> dict[str, int]:
    """Fill :data:`CPU_ZERO3_SIZES` into a stage-3 ``config`` built from arguments alone; return what was set.

    ``changed_arguments`` are the strategy arguments the user passed with a non-default value
    (``reduce_bucket_size=...``, ``sub_group_size=...``): those keep the user's value. ``None`` means
    the user gave a config of their own: it is used as written and nothing is added.
    """
    zero = config.get("zero_optimization")
    if changed_arguments is None or not isinstance(zero, dict) or zero.get("stage") != 3:
        return {}
    applied = {key: value for key, value in CPU_ZERO3_SIZES.items() if key not in changed_arguments}
    zero.update(applied)
    return applied


# Which argument sets which config entry: used to find contradictions with a user's config.
_ARGUMENT_PATHS: dict[str, tuple[str, ...]] = {
    "stage": ("zero_optimization", "stage"),
    "contiguous_gradients": ("zero_optimization", "contiguous_gradients"),
    "overlap_comm": ("zero_optimization", "overlap_comm"),
    "allgather_partitions": ("zero_optimization", "allgather_partitions"),
    "reduce_scatter": ("zero_optimization", "reduce_scatter"),
    "allgather_bucket_size": ("zero_optimization", "allgather_bucket_size"),
    "reduce_bucket_size": ("zero_optimization", "reduce_bucket_size"),
    "sub_group_size": ("zero_optimization", "sub_group_size"),
    "offload_optimizer_device": ("zero_optimization", "offload_optimizer", "device"),
    "offload_params_device": ("zero_optimization", "offload_param", "device"),
    "zero_allow_untested_optimizer": ("zero_allow_untested_optimizer",),
    "logging_batch_size_per_gpu": ("train_micro_batch_size_per_gpu",),
}


def merge_config(
    from_arguments: dict[str, Any],
    user: dict[str, Any] | None,
    arguments: dict[str, Any],
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    """The user's config, completed by the arguments that were changed from their defaults.

    Without a user config the arguments' config is used whole. With one, an argument left at its
    default adds nothing (the config is complete as written, as in Lightning); a changed argument
    adds its entry where the config has none, and is an error where the config says otherwise.
    """
    if user is None:
        return from_arguments
    changed = {name for name, value in arguments.items() if value != defaults[name]}
    merged = json.loads(json.dumps(user))
    loss_scale = {k: arguments[k] for k in LOSS_SCALE_DEFAULTS if k in changed}
    merged["__loss_scale__"] = loss_scale
    merged.setdefault("train_micro_batch_size_per_gpu", arguments["logging_batch_size_per_gpu"])
    for key, value in loss_scale.items():
        configured = (user.get("fp16") or {}).get(key)
        if configured is not None and configured != value:
            raise ValueError(
                f"DeepSpeedStrategy({key}={value!r}) contradicts the config's 'fp16': {{'{key}': {configured!r}}}. "
                f"Set it in one place only."
            )
    # switches that create whole sections
    if "zero_optimization" in changed and not arguments["zero_optimization"] and "zero_optimization" in user:
        raise ValueError(
            "DeepSpeedStrategy(zero_optimization=False) contradicts the config, which has a 'zero_optimization' "
            "section. Remove one of the two."
        )
    section_switches = {"offload_optimizer": "offload_optimizer", "offload_parameters": "offload_param"}
    zero_user = user.get("zero_optimization") or {}
    for argument, config_key in section_switches.items():
        if argument in changed:
            if config_key in zero_user and not zero_user[config_key]:
                raise ValueError(
                    f"DeepSpeedStrategy({argument}=True) contradicts the config's "
                    f"zero_optimization.{config_key}. Set it in one place only."
                )
            if config_key not in zero_user:
                merged.setdefault("zero_optimization", {})[config_key] = from_arguments["zero_optimization"][
                    config_key
                ]
    for argument, path in _ARGUMENT_PATHS.items():
        if argument not in changed:
            continue
        value = arguments[argument]
        node: Any = user
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            _set_path(merged, path, value)
        elif node != value:
            raise ValueError(
                f"DeepSpeedStrategy({argument}={value!r}) contradicts the config, which sets "
                f"{'.'.join(path)}={node!r}. Set it in one place only: drop the argument (the config wins) or "
                f"change the config."
            )
    return merged


def _set_path(config: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def offloads_optimizer(config: dict[str, Any]) -> bool:
    section = (config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    return section.get("device", "none") in _DEVICES


def engine_config(
    user_config: dict[str, Any], precision: Any, loss_scale: Mapping[str, Any]
) -> dict[str, Any]:
    """The config given to DeepSpeed: ``user_config`` plus the section of ``precision`` (a ``DeepSpeedPrecision``).

    A contradiction between the two is an error that says which to change.
    """
    config = json.loads(json.dumps(user_config))  # a deep copy DeepSpeed may change freely
    wanted = precision.config_section()
    for section in ("fp16", "bf16"):
        enabled_in_config = bool((config.get(section) or {}).get("enabled", False))
        if enabled_in_config and section not in wanted:
            raise ValueError(
                f"The DeepSpeed config enables '{section}', but Fabric(precision={precision.precision!r}). "
                f"Pass Fabric(precision={'16-mixed' if section == 'fp16' else 'bf16-mixed'!r}), or remove "
                f"'{section}' from the config."
            )
    for section, value in wanted.items():
        config[section] = {**value, **(config.get(section) or {}), "enabled": True}
    if "fp16" in wanted:
        for key, default in LOSS_SCALE_DEFAULTS.items():
            config["fp16"].setdefault(key, loss_scale.get(key, default))
    # DeepSpeed clips at norm 1.0 unless told otherwise; a Fabric loop clips only when asked.
    config.setdefault("gradient_clipping", 0.0)
    return config
