"""Which submodules of a model become FSDP units, and which recompute their activations.

A policy is a predicate ``fn(module) -> bool``. Users pass a set of module classes, a callable, or
FSDP1's ``ModuleWrapPolicy`` / ``fn(module, recurse, nonwrapped_numel)``; :func:`as_predicate` turns
each into a predicate. Without one, :func:`default_policy` makes each parameter-holding child a unit,
keeping tied parameters with the unit that encloses all their users.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import Module

ShardingPolicy = set[type[Module]] | Callable[[Module], bool]


CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict)


def as_predicate(policy: Any, name: str, owner: str = "FSDPStrategy") -> Callable[[Module], bool] | None:
    """``policy`` as a predicate; ``owner(name=...)`` is how an error names the argument."""
    if policy is None:
        return None
    classes_of = getattr(policy, "_module_classes", None)  # FSDP1's ModuleWrapPolicy
    if classes_of is not None:
        policy = set(classes_of)
    if callable(policy) and not isinstance(policy, type) and _takes_recurse(policy):
        fsdp1_policy = (
            policy  # FSDP1 signature fn(module, recurse, nonwrapped_numel): ask about the module itself
        )

        def predicate(module: Module) -> bool:
            numel = sum(p.numel() for p in module.parameters())
            return bool(fsdp1_policy(module=module, recurse=False, nonwrapped_numel=numel))

        return predicate
    if isinstance(policy, type) and issubclass(policy, Module):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        if not all(isinstance(c, type) and issubclass(c, Module) for c in classes):
            raise TypeError(f"{owner}({name}={policy!r}): a set of policies must hold nn.Module classes.")
        return lambda module: isinstance(module, classes)
    if callable(policy):
        return policy
    raise TypeError(
        f"{owner}({name}={policy!r}): pass a set of module classes or a callable(module) -> bool."
    )


def _takes_recurse(function: Callable[..., Any]) -> bool:
    try:
        return "recurse" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def default_policy(model: Module) -> Callable[[Module], bool]:
    """Each direct child of ``model`` that holds parameters is its own unit, unless it shares one.

    Containers (``ModuleList``, ``ModuleDict``) have no forward, so FSDP2 cannot shard them ("does not
    support containers"): their children take their place, recursively. With the usual transformer
    layout (``self.blocks = nn.ModuleList(...)``) each block becomes a unit.

    A parameter used by several modules (tied embeddings: GPT-2's ``lm_head`` and ``wte``, T5's encoder
    and decoder sharing one embedding) must be gathered by a unit that contains every module using it,
    or one user would see it resharded. So a child that holds a shared parameter while some other user
    of it lies outside that child is not a unit: its own children are considered instead, and the
    shared parameter itself stays with the unit that encloses all of its users (the root, for the
    usual tied head). Sharing is found by parameter identity, not by names.
    """
    shared = _shared_parameter_paths(model)
    units: set[int] = set()

    def splits_a_shared_parameter(path: str, child: Module) -> bool:
        own = {id(p) for p in child.parameters()}
        return any(
            key in own and any(not _within(user, path) for user in users) for key, users in shared.items()
        )

    def visit(parent: Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            if not any(True for _ in child.parameters()):
                continue
            if isinstance(child, CONTAINERS) or splits_a_shared_parameter(path, child):
                visit(child, f"{path}.")
            else:
                units.add(id(child))

    visit(model, "")
    return lambda module: id(module) in units


def _shared_parameter_paths(model: Module) -> dict[int, set[str]]:
    """``id`` of each parameter reachable under more than one module path -> those paths.

    A parameter is shared when two modules register it (a tied ``lm_head.weight``) or when one module
    holding it is registered in two places (T5 passes its ``shared`` embedding to both stacks).
    """
    paths: dict[int, set[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            paths.setdefault(id(param), set()).add(path)
    return {key: users for key, users in paths.items() if len(users) > 1}


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(f"{ancestor}.")


def apply_activation_checkpointing(module: Module, policy: Callable[[Module], bool]) -> None:
    # lazy: torch's checkpoint wrapper, only when activation checkpointing is on
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(module, check_fn=policy)


__all__ = ["CONTAINERS", "ShardingPolicy", "apply_activation_checkpointing", "as_predicate", "default_policy"]
