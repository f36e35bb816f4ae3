"""Sharded checkpoints: a directory written with ``torch.distributed.checkpoint`` (DCP).

Layout of a checkpoint directory::

    ckpt/
      .metadata, __0_0.distcp, __1_0.distcp, ...   # DCP: the modules' and optimizers' shards
      meta.pt                                       # everything else (plain values, loader positions,
                                                    # random states, the precision's state), one file

Every process writes its own shards, in parallel; nothing is gathered on one process. The directory
is written beside the target and renamed over it only when complete, so a crash mid-save leaves the
previous checkpoint loadable. DCP reshards on load, so a directory written by N processes loads into
M processes, or into a plain model on one process.

Optimizer state inside DCP is keyed by parameter names (``get_optimizer_state_dict``), which is what
makes it independent of the layout; the helpers below convert to and from the index-keyed form of
``optimizer.state_dict()``.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Iterable
from typing import Any

import torch
from torch.nn import Module
from torch.optim import Optimizer

from fabric.checkpoint.io import CheckpointError, fsync_directory

META_FILE = "meta.pt"
_OLD_TAG = ".old-"
_TMP_TAG = ".tmp-"


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is (or, after an interrupted swap, was) a sharded checkpoint directory."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def temporary_directory_for(path: str | os.PathLike[str], token: str | None = None) -> str:
    """A fresh sibling directory name for writing ``path``'s next version."""
    path = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}{_TMP_TAG}{token or uuid.uuid4().hex}")


def commit_directory(tmp: str, path: str | os.PathLike[str]) -> None:
    """Put the complete directory ``tmp`` in place of ``path`` (called on one process).

    The old directory is first renamed aside, then ``tmp`` renamed to ``path``, then the old one is
    deleted. A crash between the two renames leaves both complete directories on disk, and
    :func:`resolve_checkpoint_path` finds the old one; at no point is there no loadable checkpoint.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    fsync_directory(tmp)
    old = None
    if os.path.lexists(path):
        if not os.path.isdir(path):
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"Cannot write a sharded checkpoint to '{path}': a file is there. Choose another path or "
                f"remove the file."
            )
        old = os.path.join(parent, f".{name}{_OLD_TAG}{uuid.uuid4().hex}")
        os.rename(path, old)
    os.rename(tmp, path)
    fsync_directory(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in glob.glob(os.path.join(parent, f".{glob.escape(name)}{_OLD_TAG}*")):
        shutil.rmtree(stale, ignore_errors=True)


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> str:
    """``path``, or the previous version left aside by a save that crashed between its two renames."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        return path
    parent, name = os.path.split(path)
    olds = sorted(glob.glob(os.path.join(parent, f".{glob.escape(name)}{_OLD_TAG}*")), key=os.path.getmtime)
    if olds and is_sharded_checkpoint(olds[-1]):
        return olds[-1]
    raise FileNotFoundError(f"No checkpoint at '{path}'.")


def save_sharded(shards: dict[str, Any], directory: str) -> None:
    """Write the (sharded) tensors of ``shards`` into ``directory`` with DCP; every process calls this."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dcp.save(shards, checkpoint_id=directory, no_dist=not dist.is_initialized())


def load_sharded(shards: dict[str, Any], directory: str, distributed: bool, strict: bool = True) -> None:
    """Fill the tensors of ``shards`` in place from ``directory`` (any layout: DCP reshards).

    With ``distributed=False`` this process reads whole tensors by itself (one process, or DDP where
    every process holds the full model).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    try:
        dcp.load(
            shards,
            checkpoint_id=directory,
            planner=DefaultLoadPlanner(allow_partial_load=not strict),
            no_dist=not distributed,
        )
    # DCP raises RuntimeError, KeyError, ... and, across processes, CheckpointException: a BaseException
    # whose text is every rank's traceback; name the first rank's error instead.
    except (Exception, CheckpointException) as err:
        failures = err.failures if isinstance(err, CheckpointException) else {}
        cause = next(iter(failures.values()))[0] if failures else err
        raise CheckpointError(
            f"Could not load the sharded checkpoint '{directory}': {cause}. Check that it holds the requested "
            f"entries and that the model has the same parameters (pass strict=False to skip missing ones)."
        ) from err


def saved_keys(directory: str) -> set[str]:
    """The top-level entries stored in the DCP part of ``directory``."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(directory).read_metadata()
    return {key.split(".", 1)[0] for key in metadata.state_dict_metadata}


def module_state(module: Module, full: bool = False) -> dict[str, Any]:
    """The module's state dict: sharded (DTensors) or full (plain CPU tensors on rank 0)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=full, cpu_offload=full))


def optimizer_state(module: Module, optimizer: Optimizer, full: bool = False) -> dict[str, Any]:
    """The optimizer's state dict keyed by parameter names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=full, cpu_offload=full)
    )


def set_module_state(module: Module, state: dict[str, Any], strict: bool, full: bool) -> None:
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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=full))


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


def consolidate(directory: str | os.PathLike[str], output: str | os.PathLike[str]) -> None:
    """Turn a sharded checkpoint directory into one file that ``torch.load`` (and ``Fabric.load``) reads.

    Runs on one process, without a process group. Optimizer states stay keyed by parameter name,
    which ``Fabric.load`` maps back onto the optimizer.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from fabric.checkpoint.io import atomic_save, safe_load

    directory = resolve_checkpoint_path(directory)
    if not is_sharded_checkpoint(directory):
        raise CheckpointError(f"'{directory}' is not a sharded checkpoint directory (it has no .metadata).")
    output = os.fspath(output)
    scratch = f"{output}{_TMP_TAG}{uuid.uuid4().hex}"
    try:
        dcp_to_torch_save(directory, scratch)
        checkpoint = torch.load(scratch, map_location="cpu", weights_only=True)
    finally:
        if os.path.exists(scratch):
            os.remove(scratch)
    meta_path = os.path.join(directory, META_FILE)
    if os.path.exists(meta_path):
        checkpoint.update(safe_load(meta_path))
    atomic_save(checkpoint, output)
