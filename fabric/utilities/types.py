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
