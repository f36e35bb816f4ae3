"""What a save or a load was asked for, carried as one object from ``Fabric.save``/``load`` to the layout,
and the checks and conversions of the entries of ``state`` that every layout shares.

A keyword added to ``Fabric.save`` becomes a field here and is read where it matters (the layout),
instead of being threaded through the facade, the strategy and the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.nn import Module
from torch.optim import Optimizer

from fabric.checkpoint.keys import RESERVED_KEYS
from fabric.utilities.types import Stateful

#: ``Fabric.save(filter=...)``: per state key, which items of its state dict to keep
Filter = Mapping[str, Callable[[str, Any], bool]]
#: the model each set-up optimizer updates (sharded optimizer states are keyed by its parameter names)
Owners = Mapping[Optimizer, Module]


@dataclass(frozen=True)
class SaveOptions:
    """How ``Fabric.save`` writes a checkpoint.

    Args:
        filter: per state key, ``fn(key, value) -> bool`` choosing the items of its state dict to keep.
        owners: the model each optimizer updates (Fabric's record from ``setup``).
        per_rank_keys: the keys of ``state`` holding set-up dataloaders, whose positions every process
            stores for an exact resume.
        async_save: return once the state is copied to CPU memory and write in a background thread.
    """

    filter: Filter | None = None
    owners: Owners = field(default_factory=dict)
    per_rank_keys: tuple[str, ...] = ()
    async_save: bool = False


@dataclass(frozen=True)
class LoadOptions:
    """How ``Fabric.load`` restores a checkpoint.

    Args:
        strict: every key of ``state`` (and of each model's state dict) must be in the checkpoint.
        weights_only: read only tensors and plain containers (nothing in the file can run code).
        restore_rng: give every process its random state back.
        owners: the model each optimizer updates (Fabric's record from ``setup``).
    """

    strict: bool = True
    weights_only: bool = True
    restore_rng: bool = True
    owners: Owners = field(default_factory=dict)


#: what a save or load does when nothing is passed (frozen: shared safely)
DEFAULT_SAVE = SaveOptions()
DEFAULT_LOAD = LoadOptions()


# ------------------------------------------------------------------ entries of `state`
def convert_plain(state: Mapping[str, Any], filter: Filter) -> dict[str, Any]:
    """Entries that are not models or optimizers, as stored: ``state_dict()`` of stateful objects, filtered."""
    converted: dict[str, Any] = {}
    for key, obj in state.items():
        apply_filter(converted, key, plain(obj), filter)
    return converted


def plain(obj: Any) -> Any:
    return obj.state_dict() if isinstance(obj, Stateful) else obj


def apply_filter(target: dict[str, Any], key: str, value: Any, filter: Filter) -> None:
    """Store ``value`` under ``key``, keeping only the items ``filter[key]`` accepts (Lightning's rule).

    Values that are not dicts cannot be filtered and are stored as they are; a dict from which the
    filter keeps nothing leaves no entry.
    """
    if key in filter and isinstance(value, Mapping):
        kept = {k: v for k, v in value.items() if filter[key](k, v)}
        if kept:
            target[key] = kept
    else:
        target[key] = value


def check_state(state: Any, method: str) -> None:
    if not isinstance(state, Mapping):
        raise TypeError(
            f"Fabric.{method}(path, state): `state` must be a dict like {{'model': model}}, got {type(state).__name__}."
        )
    reserved = sorted(RESERVED_KEYS.intersection(state))
    if reserved:
        raise ValueError(
            f"Fabric.{method}(path, state): the keys {reserved} are reserved for the resume state Fabric stores by "
            f"itself. Rename those entries of `state`."
        )


def check_filter(filter: Any, state: Mapping[str, Any]) -> Filter:
    if filter is None:
        return {}
    if not isinstance(filter, Mapping) or not all(callable(f) for f in filter.values()):
        raise TypeError(
            "Fabric.save(filter=...): pass a dict mapping state keys to `fn(key, value) -> bool`."
        )
    unknown = sorted(set(filter) - set(state))
    if unknown:
        # Lightning ignores these; a filter that names no entry is almost always a typo, so it is an error here.
        raise KeyError(
            f"Fabric.save(filter=...) names {unknown}, which are not keys of `state` ({sorted(state)}). Filter "
            f"keys must match the state's keys."
        )
    return filter


def owner(optimizer: Optimizer, owners: Owners, state: Mapping[str, Any] | None = None) -> Module:
    """The model ``optimizer`` updates: sharded optimizer state is keyed by that model's parameter names."""
    module = owners.get(optimizer) or owner_in(optimizer, state or {})
    if module is None:
        raise KeyError(
            f"A sharded checkpoint stores {type(optimizer).__name__}'s state by parameter name, so it needs the "
            f"model the optimizer updates: set both up with `fabric.setup(model, optimizer)` (or `setup_module` "
            f"then `setup_optimizers`), or put the model in the same `state`."
        )
    return module


def owner_in(optimizer: Optimizer, state: Mapping[str, Any]) -> Module | None:
    """The module in ``state`` whose parameters ``optimizer`` updates (for objects Fabric did not set up)."""
    first = next((p for group in optimizer.param_groups for p in group["params"]), None)
    for obj in state.values():
        if isinstance(obj, Module) and any(p is first for p in obj.parameters()):
            return obj
    return None


__all__ = [
    "DEFAULT_LOAD",
    "DEFAULT_SAVE",
    "Filter",
    "LoadOptions",
    "Owners",
    "SaveOptions",
    "apply_filter",
    "check_filter",
    "check_state",
    "convert_plain",
    "owner",
    "owner_in",
    "plain",
]
