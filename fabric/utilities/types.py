"""Type aliases used across the package."""

from __future__ import annotations

import os
from typing import Any, Literal, Protocol, Union, runtime_checkable

import torch

PathLike = Union[str, "os.PathLike[str]"]
DeviceLike = Union[str, int, torch.device]  # noqa: UP007
ReduceOp = Literal["sum", "mean", "max", "min"]


@runtime_checkable
class Stateful(Protocol):
    """Anything with ``state_dict``/``load_state_dict``: restored in place by ``Fabric.load``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class Optimizable(Protocol):
    """Anything that steps like an optimizer (Lightning's ``Optimizable``)."""

    def step(self, closure: Any = None) -> Any: ...

    def zero_grad(self, *args: Any, **kwargs: Any) -> None: ...


@runtime_checkable
class Steppable(Protocol):
    """Anything with a ``step`` (Lightning's ``Steppable``): an optimizer or a DeepSpeed engine."""

    def step(self, *args: Any, **kwargs: Any) -> Any: ...


def __getattr__(name: str) -> Any:
    # Lightning's `CollectibleGroup` (a process group): its module imports torch.distributed, so it is
    # looked up only when asked for.
    if name == "CollectibleGroup":
        # lazy attribute: its module imports torch.distributed
        from fabric.plugins.collectives.collective import CollectibleGroup

        return CollectibleGroup
    raise AttributeError(f"module 'fabric.utilities.types' has no attribute {name!r}")
