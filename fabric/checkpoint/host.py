"""What the checkpoint pipeline and its layouts ask of a strategy (its *host*), as protocols.

A strategy satisfies them by having the members; nothing here imports a strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from torch.nn import Module
from torch.optim import Optimizer

from fabric.checkpoint.checkpoint_io import CheckpointIO

#: how a strategy's checkpoints are written: one file by global rank 0, a sharded directory (every
#: process its shard), or DeepSpeed's directory (written by its engine)
LayoutName = Literal["file", "sharded", "deepspeed"]


class Collectives(Protocol):
    """The collectives a directory write needs: the strategy's, or a background save's own group's."""

    @property
    def global_rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    def barrier(self, name: str | None = None) -> None: ...

    def broadcast(self, obj: Any, src: int = 0) -> Any: ...

    def gather_object(self, obj: Any) -> list[Any]: ...


class CheckpointHost(Collectives, Protocol):
    """What the pipeline asks of a strategy: its collectives, and the rest below."""

    @property
    def precision(self) -> Any: ...

    @property
    def checkpoint_io(self) -> CheckpointIO: ...

    @property
    def checkpoint_layout(self) -> LayoutName: ...

    #: whether each process holds a shard of the model (and reads only its shard of a directory)
    sharded_checkpoints: bool

    #: returns the size and CRC-32 of the files it wrote, or ``None`` if its writer cannot take them
    def save_shards(self, shards: dict[str, Any], directory: str) -> dict[str, dict[str, int]] | None: ...

    def prepare_save(self, state: Mapping[str, Any]) -> None: ...

    def capture_rng_state(self) -> dict[str, Any]: ...

    def restore_rng_state(self, rng_state: dict[str, Any]) -> None: ...

    def get_module_state_dict(self, module: Module) -> dict[str, Any]: ...

    def get_optimizer_state(self, optimizer: Optimizer, module: Module | None = None) -> dict[str, Any]: ...

    def load_module_state_dict(
        self, module: Module, state_dict: dict[str, Any], strict: bool = True
    ) -> None: ...

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: dict[str, Any], module: Module | None = None
    ) -> None: ...


__all__ = ["CheckpointHost", "Collectives", "LayoutName"]
