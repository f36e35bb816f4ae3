"""State dicts of models and optimizers, full or sharded, in the forms checkpoints store them.

Everything here goes through ``torch.distributed.checkpoint.state_dict``, which works for plain
modules and for FSDP2/tensor-parallel ones alike: a sharded model gives DTensor shards, a full state
dict gathers plain CPU tensors. Optimizer state is keyed by parameter names there, which is what makes a
checkpoint independent of the layout; the helpers below convert to and from the index-keyed form of
``optimizer.state_dict()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.nn import Module
from torch.optim import Optimizer

from fabric.checkpoint.io import CheckpointError
from fabric.utilities.apply import move_to_device


def module_state(module: Module, full: bool = False) -> dict[str, Any]:
    """The module's state dict: sharded (DTensors) or full (plain CPU tensors on rank 0)."""
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=full, cpu_offload=full))


def optimizer_state(
    module: Module, optimizer: Optimizer, full: bool = False, every_rank: bool = False
) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter names.

    A full state is gathered into CPU memory on global rank 0 only (the other ranks get an empty dict),
    unless ``every_rank``: then every rank gathers it on its device and moves it to the CPU.
    """
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if full and every_rank:
        state = get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True))
        return move_to_device(state, torch.device("cpu"))
    return get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=full, cpu_offload=full)
    )


def set_module_state(module: Module, state: dict[str, Any], strict: bool, full: bool) -> None:
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if strict and full:
        # With a full state dict, torch fills the keys it lacks with the module's current values and
        # reports nothing missing: compare the keys here.
        expected = set(module_state(module))
        _check_keys(module, sorted(expected - set(state)), sorted(set(state) - expected))
    result = set_model_state_dict(
        module, state, options=StateDictOptions(full_state_dict=full, strict=strict)
    )
    if strict:
        _check_keys(module, result.missing_keys, result.unexpected_keys)


def _check_keys(module: Module, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(module).__name__}: Missing key(s): {missing}; "
            f"unexpected key(s): {unexpected}. Pass strict=False to skip them."
        )


def set_optimizer_state(module: Module, optimizer: Optimizer, state: dict[str, Any], full: bool) -> None:
    # heavy: torch.distributed.checkpoint (~1 s) loads only when used
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=full))


def check_optimizer_kind(optimizer: Optimizer, saved: Any, path: str, key: str) -> None:
    """Refuse an optimizer state saved from another kind of optimizer, before anything is loaded.

    ``optimizer.load_state_dict`` copies the saved hyper-parameters over the optimizer's own without a
    look: an Adam state loads into SGD silently, and SGD's next ``step()`` fails with ``KeyError:
    'momentum'``. Each optimizer class keeps its own hyper-parameters in its parameter groups, and the
    checkpoint holds them, so two kinds differ where each has keys the other lacks. Keys missing on one
    side only are tolerated: a torch release adds a hyper-parameter, and ``load_state_dict`` fills it in.
    """
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        return
    saved_keys = {name for group in groups for name in group} - {"params"}
    own_keys = {name for group in optimizer.param_groups for name in group} - {"params"}
    missing, foreign = sorted(own_keys - saved_keys), sorted(saved_keys - own_keys)
    if missing and foreign:
        kind = type(optimizer).__name__
        raise ValueError(
            f"Fabric.load('{path}'): the optimizer state under {key!r} was saved from another kind of optimizer "
            f"than this {kind}: its parameter groups have {foreign} and lack {missing}, which {kind} needs. "
            f"Nothing was loaded. Load it into the optimizer class it was saved from (the same torch.optim "
            f"class), or leave {key!r} out of `state` to start this {kind} afresh."
        )


#: name parts that wrappers insert (activation checkpointing); state dicts are keyed without them
_WRAPPER_NAME_PARTS = ("_checkpoint_wrapped_module.",)


def parameter_names(modules: Iterable[Module]) -> dict[int, str]:
    """``id(parameter) -> name`` over ``modules``, named as in the module's state dict.

    Activation checkpointing wraps submodules and so changes the names ``named_parameters`` gives;
    the names here leave the wrapper out, like DCP's state dicts do.
    """
    names: dict[int, str] = {}
    for module in modules:
        for name, parameter in module.named_parameters(remove_duplicate=False):
            for part in _WRAPPER_NAME_PARTS:
                name = name.replace(part, "")
            names.setdefault(id(parameter), name)
    return names


def optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """Name-keyed optimizer state -> the index-keyed form ``optimizer.load_state_dict`` takes."""
    if not is_name_keyed(state):
        return state
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        new_group = dict(group)
        new_group["params"] = []
        for name in group["params"]:
            index[name] = len(index)
            new_group["params"].append(index[name])
        groups.append(new_group)
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def optimizer_state_by_name(
    state: dict[str, Any], optimizer: Optimizer, names: dict[int, str]
) -> dict[str, Any]:
    """Index-keyed optimizer state -> keyed by the names of ``optimizer``'s parameters, in its order."""
    if is_name_keyed(state):
        return state
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        by_index = [names[id(p)] for p in ordered]
    except KeyError:
        raise CheckpointError(
            "Cannot match the optimizer's parameters to the model's: create the optimizer from the "
            "parameters of the model you pass in the same `state`."
        ) from None
    groups = []
    for group in state["param_groups"]:
        new_group = dict(group)
        new_group["params"] = [by_index[i] for i in group["params"]]
        groups.append(new_group)
    return {"state": {by_index[i]: value for i, value in state["state"].items()}, "param_groups": groups}


def is_name_keyed(state: dict[str, Any]) -> bool:
    params = [p for group in state.get("param_groups", []) for p in group["params"]]
    return bool(params) and isinstance(params[0], str)
