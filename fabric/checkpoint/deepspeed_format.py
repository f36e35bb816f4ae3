"""DeepSpeed's checkpoint directory, as Fabric writes it: format checks, safe reading, consolidation.

Layout::

    ckpt/
      checkpoint/                 # DeepSpeed's own files (``engine.save_checkpoint(tag="checkpoint")``)
      latest
      meta.pt                     # plain values, resume state, which state keys held the model/optimizer
      fabric-manifest.json        # size and CRC-32 of every file; written last

The strategy (``fabric.strategies.deepspeed``) writes and loads it through its engine; this module is
what any process can do with one without an engine: recognise it, check it, and consolidate it into
one file (which is also how a non-DeepSpeed run loads it). DeepSpeed itself is imported only inside
:func:`consolidate_deepspeed`.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Any

import torch
import torch.serialization

from fabric.checkpoint.directory import check_directory_alone, read_meta
from fabric.checkpoint.io import CheckpointError, atomic_save, safe_load
from fabric.checkpoint.keys import DEEPSPEED_KEY, RESERVED_KEYS
from fabric.checkpoint.sharded import resolve_checkpoint_path
from fabric.utilities.types import PathLike

#: DeepSpeed's tag (sub-directory) inside our checkpoint directory
TAG = "checkpoint"
#: our file beside DeepSpeed's: plain values and per-rank resume state
META_FILE = "meta.pt"

_INSTALL_HINT = "pip install torch-fabric[deepspeed]"


def deepspeed_available() -> bool:
    """Whether ``import deepspeed`` can succeed (checked without importing it)."""
    try:
        return importlib.util.find_spec("deepspeed") is not None
    except (ValueError, ImportError):
        return False


def is_deepspeed_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` is a checkpoint directory written by :class:`DeepSpeedStrategy`."""
    return (
        os.path.isdir(path)
        and os.path.isdir(os.path.join(path, TAG))
        and os.path.isfile(os.path.join(path, META_FILE))
    )


def resolve_deepspeed_checkpoint(path: PathLike) -> str:
    """``path``, or the previous version that a save killed between its two renames left aside."""
    path = resolve_checkpoint_path(path, accept=is_deepspeed_checkpoint)
    if not is_deepspeed_checkpoint(path):
        raise CheckpointError(
            f"'{path}' is not a DeepSpeed checkpoint directory written by Fabric (it needs '{TAG}/' and "
            f"'{META_FILE}'). Pass the directory `fabric.save` wrote under DeepSpeedStrategy."
        )
    return path


def read_whole_checkpoint(directory: str, weights_only: bool = True) -> dict[str, Any]:
    """Everything in a DeepSpeed directory as one dict of full tensors (``fabric.load(path)`` without state)."""

    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "full.pt")
        consolidate_deepspeed(directory, target, weights_only=weights_only)
        checkpoint = safe_load(target, map_location="cpu")
    for key in RESERVED_KEYS:
        checkpoint.pop(key, None)
    return checkpoint


#: what DeepSpeed's own checkpoint files may reference beyond tensors and containers
_DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.checkpoint.constants",
)


def check_engine_files(directory: str) -> None:
    """Refuse a DeepSpeed directory whose files hold more than tensors, containers and DeepSpeed's own records.

    DeepSpeed reads its files with ``torch.load(weights_only=False)``, so a crafted file would run code.
    Each file is first opened with ``torch.load(weights_only=True)``, admitting only the few DeepSpeed
    classes its checkpoints contain; anything else is an error before DeepSpeed reads a byte.
    """

    root = os.path.join(directory, TAG)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        unsafe = [
            g
            for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if not g.startswith(_DEEPSPEED_SAFE_GLOBALS)
        ]
        if unsafe:
            raise CheckpointError(
                f"The DeepSpeed checkpoint file '{path}' references Python objects beyond DeepSpeed's own checkpoint "
                f"records ({', '.join(sorted(unsafe))}); loading it could run code, so it was refused. If, and only "
                f"if, you trust the source of this checkpoint, load it with `weights_only=False`."
            )


def consolidate_deepspeed(directory: PathLike, output: PathLike, weights_only: bool = True) -> None:
    """Turn a DeepSpeed checkpoint directory into one file that ``torch.load`` and any strategy's ``Fabric.load`` read.

    The model's weights are merged from the ZeRO partitions into full float32 tensors (DeepSpeed's
    ``get_fp32_state_dict_from_zero_checkpoint``) and stored under the key the model had in
    ``fabric.save``'s state. The optimizer's state, when it was saved, is merged the same way (see
    :func:`full_optimizer_state`) and stored keyed by parameter name, as a consolidated FSDP checkpoint
    holds it, so that a torch optimizer of the same kind resumes from it on one process. The plain
    values and the per-rank resume state come along. Runs on one process, without a process group.
    """
    if not deepspeed_available():
        raise ModuleNotFoundError(
            f"Consolidating a DeepSpeed checkpoint needs the `deepspeed` package to read ZeRO's partitions: "
            f"`{_INSTALL_HINT}`."
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    directory = resolve_deepspeed_checkpoint(directory)
    check_directory_alone(directory)
    if weights_only:
        check_engine_files(directory)
    meta = read_meta(directory, weights_only=weights_only)
    info = meta.pop(DEEPSPEED_KEY, {}) or {}
    module_key = info.get("module") or "model"
    weights = get_fp32_state_dict_from_zero_checkpoint(directory, tag=TAG)
    checkpoint = dict(meta)
    checkpoint[module_key] = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    optimizer_key = info.get("optimizer")
    if optimizer_key is not None:
        checkpoint[optimizer_key] = full_optimizer_state(os.path.join(directory, TAG))
    atomic_save(checkpoint, output)


def full_optimizer_state(engine_directory: str) -> dict[str, Any]:
    """The ZeRO optimizer state of a DeepSpeed tag directory as one torch optimizer state, keyed by parameter name.

    Each process saved its partition of the flat float32 groups and, beside it, the torch optimizer's
    state over that partition (Adam's ``exp_avg`` and ``exp_avg_sq``, one per flat group). Those flat
    state tensors have the layout of the float32 master weights, so DeepSpeed's own merge of the master
    weights (``zero_to_fp32``'s ZeRO-2 and ZeRO-3 reconstruction, with its padding rules) rebuilds them
    per parameter; scalar entries such as ``step`` are shared by every parameter of a group. The result
    is ``{"state": {name: {...}}, "param_groups": [{..., "params": [names]}]}``, which ``Fabric.load``
    maps onto an optimizer over the same model on any strategy. A layout this does not know raises
    :class:`CheckpointError` rather than dropping the state.
    """
    from deepspeed.checkpoint.constants import (
        FP32_FLAT_GROUPS,
        OPTIMIZER_STATE_DICT,
        PARTITION_COUNT,
        SINGLE_PARTITION_OF_FP32_GROUPS,
        ZERO_STAGE,
    )
    from deepspeed.utils import zero_to_fp32

    model_states = zero_to_fp32.parse_model_states(zero_to_fp32.get_model_state_files(engine_directory))
    files = zero_to_fp32.get_optim_files(engine_directory)
    # The files passed `check_engine_files` (or the caller trusts them: weights_only=False), as for the weights.
    saved = [torch.load(f, map_location="cpu", weights_only=False)[OPTIMIZER_STATE_DICT] for f in files]
    stage = int(saved[0][ZERO_STAGE])
    world_size = saved[0][PARTITION_COUNT]
    world_size = max(world_size) if isinstance(world_size, list) else int(world_size)
    inner_key, flat_key = (
        ("base_optimizer_state", SINGLE_PARTITION_OF_FP32_GROUPS)
        if stage <= 2
        else (OPTIMIZER_STATE_DICT, FP32_FLAT_GROUPS)
    )

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(
            f"The ZeRO-{stage} optimizer state in '{engine_directory}' cannot be merged into one torch optimizer "
            f"state: {reason}. Resume the optimizer under DeepSpeedStrategy from the directory, or load only the "
            f"model (leave the optimizer out of `state`, e.g. fabric.load(path, {{'model': model}}))."
        )

    if world_size != len(files) or any(inner_key not in part or flat_key not in part for part in saved):
        raise refuse(f"expected {world_size} optimizer files holding '{inner_key}' and '{flat_key}'")
    inner = [part[inner_key] for part in saved]
    flats = [part[flat_key] for part in saved]
    groups = inner[0]["param_groups"]
    order = [index for group in groups for index in group["params"]]  # one torch parameter per flat group
    shapes = model_states[0].param_shapes
    if len(order) != len(flats[0]) or len(shapes) != len(order):
        raise refuse(
            f"{len(order)} optimizer parameters, {len(flats[0])} flat groups and {len(shapes)} parameter-name groups "
            f"do not line up (a layout this merge does not know)"
        )
    names = [list(group_shapes) for group_shapes in shapes]
    state: dict[str, dict[str, Any]] = {name: {} for flat_names in names for name in flat_names}
    keys = {key for part in inner for value in part["state"].values() for key in value}
    for key in sorted(keys):
        values = [[part["state"].get(index, {}).get(key) for index in order] for part in inner]
        if all(
            isinstance(v, torch.Tensor) and v.dim() == 1 and v.numel() >= flat[j].numel()
            for rank_values, flat in zip(values, flats)
            for j, v in enumerate(rank_values)
        ):
            # The saved master weights leave out the padding at the end of the last partition; the
            # state beside them may keep it. Cut it to the weights' length, which the merge expects.
            values = [
                [v[: flat[j].numel()] for j, v in enumerate(rank_values)]
                for rank_values, flat in zip(values, flats)
            ]
            merged: dict[str, Any] = {}
            if stage <= 2:
                paddings = saved[0].get("param_alignment_paddings")
                zero_to_fp32._zero2_merge_trainable_params(merged, world_size, values, model_states, paddings)
            else:
                zero_to_fp32._zero3_merge_trainable_params(merged, world_size, values, model_states)
            for name in state:
                state[name][key] = merged[name].contiguous().clone()
        elif all(
            not isinstance(v, torch.Tensor) or v.dim() == 0 for rank_values in values for v in rank_values
        ):
            for j, value in enumerate(values[0]):  # the same on every rank (a step count, a flag)
                for name in names[j]:
                    state[name][key] = value.clone() if isinstance(value, torch.Tensor) else value
        else:
            raise refuse(f"its state entry {key!r} is neither partitioned like the weights nor a scalar")
    param_groups = []
    for group in groups:
        full_group = {k: v for k, v in group.items() if k != "params"}
        full_group["params"] = [name for index in group["params"] for name in names[order.index(index)]]
        param_groups.append(full_group)
    return {"state": {name: value for name, value in state.items() if value}, "param_groups": param_groups}
