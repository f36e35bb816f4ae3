"""Collective operations on a process group of your own, for scripts that split their processes into roles.

Lightning's decoupled PPO example creates sub-groups (one player, several trainers) and talks on them
with ``TorchCollective``; this is the same interface over ``torch.distributed``, nothing reimplemented.

Example::

    world = TorchCollective()
    world.setup(backend="gloo")            # the default group, if no one created it yet
    world.create_group()                   # this collective's own group: all processes
    trainers = world.new_group(ranks=[1, 2])
    world.broadcast_object_list(objects, src=0)
"""

from __future__ import annotations

import datetime
import os
from typing import Any, ClassVar

import torch.distributed as dist
from torch import Tensor

from fabric.plugins.collectives.collective import CollectibleGroup, Collective

_OPS = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR")


class TorchCollective(Collective):
    """A process group and the ``torch.distributed`` collectives on it; the group is ``create_group()``'s."""

    manages_default_group: ClassVar[bool] = False
    addr_key = "MASTER_ADDR"
    port_key = "MASTER_PORT"

    def __init__(self) -> None:
        if not dist.is_available():
            raise RuntimeError("TorchCollective needs torch.distributed, which this torch build lacks.")
        self._group: CollectibleGroup | None = None

    # ------------------------------------------------------------------ group
    @property
    def group(self) -> CollectibleGroup:
        if self._group is None:
            raise RuntimeError(
                "This TorchCollective has no group yet: call `collective.create_group()` (after `setup()`) first."
            )
        return self._group

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def setup(
        self, main_address: str | None = None, main_port: str | int | None = None, **kwargs: Any
    ) -> TorchCollective:
        """Create the default process group (``init_process_group(**kwargs)``) unless one exists."""
        if self.is_initialized():
            return self
        added = []
        for key, value in ((self.addr_key, main_address), (self.port_key, main_port)):
            if value is not None and key not in os.environ:
                os.environ[key] = str(value)
                added.append(key)
        try:
            self.init_group(**kwargs)
        finally:
            for key in added:
                os.environ.pop(key, None)
        TorchCollective.manages_default_group = True
        return self

    def create_group(self, **kwargs: Any) -> TorchCollective:
        """Give this collective its own group: ``new_group(**kwargs)`` (all processes by default)."""
        if self._group is not None:
            raise RuntimeError("This TorchCollective already has a group; create another TorchCollective.")
        self._group = self.new_group(**kwargs)
        return self

    def teardown(self) -> TorchCollective:
        """Destroy this collective's group, and the default group if ``setup`` created it and it is the last."""
        if self._group is None:
            raise RuntimeError("This TorchCollective has no group to tear down.")
        member = self._group != dist.GroupMember.NON_GROUP_MEMBER
        self.destroy_group(self._group)
        self._group = None
        world = dist.GroupMember.WORLD
        if member and TorchCollective.manages_default_group and world is not None:
            if len(dist.distributed_c10d._pg_map) == 1:
                self.destroy_group(world)
                TorchCollective.manages_default_group = False
        elif world is None:
            TorchCollective.manages_default_group = False
        return self

    @classmethod
    def is_available(cls) -> bool:
        return dist.is_available()

    @classmethod
    def is_initialized(cls) -> bool:
        return dist.is_available() and dist.is_initialized()

    @classmethod
    def init_group(cls, **kwargs: Any) -> None:
        dist.init_process_group(**kwargs)

    @classmethod
    def new_group(cls, **kwargs: Any) -> CollectibleGroup:
        return dist.new_group(**kwargs)

    @classmethod
    def destroy_group(cls, group: CollectibleGroup) -> None:
        # Processes outside the group hold a placeholder; only real groups are destroyed.
        if group in dist.distributed_c10d._pg_map:
            dist.destroy_process_group(group)

    # ------------------------------------------------------------ collectives
    def broadcast(self, tensor: Tensor, src: int) -> Tensor:
        dist.broadcast(tensor, src, group=self.group)
        return tensor

    def all_reduce(self, tensor: Tensor, op: str | Any = "sum") -> Tensor:
        dist.all_reduce(tensor, op=self._native_op(op), group=self.group)
        return tensor

    def reduce(self, tensor: Tensor, dst: int, op: str | Any = "sum") -> Tensor:
        dist.reduce(tensor, dst, op=self._native_op(op), group=self.group)
        return tensor

    def all_gather(self, tensor_list: list[Tensor], tensor: Tensor) -> list[Tensor]:
        dist.all_gather(tensor_list, tensor, group=self.group)
        return tensor_list

    def gather(self, tensor: Tensor, gather_list: list[Tensor], dst: int = 0) -> list[Tensor]:
        dist.gather(tensor, gather_list, dst, group=self.group)
        return gather_list

    def scatter(self, tensor: Tensor, scatter_list: list[Tensor], src: int = 0) -> Tensor:
        dist.scatter(tensor, scatter_list, src, group=self.group)
        return tensor

    def reduce_scatter(self, output: Tensor, input_list: list[Tensor], op: str | Any = "sum") -> Tensor:
        dist.reduce_scatter(output, input_list, op=self._native_op(op), group=self.group)
        return output

    def all_to_all(self, output_tensor_list: list[Tensor], input_tensor_list: list[Tensor]) -> list[Tensor]:
        dist.all_to_all(output_tensor_list, input_tensor_list, group=self.group)
        return output_tensor_list

    def send(self, tensor: Tensor, dst: int, tag: int = 0) -> None:
        dist.send(tensor, dst, tag=tag, group=self.group)

    def recv(self, tensor: Tensor, src: int | None = None, tag: int = 0) -> Tensor:
        dist.recv(tensor, src, tag=tag, group=self.group)
        return tensor

    def all_gather_object(self, object_list: list[Any], obj: Any) -> list[Any]:
        dist.all_gather_object(object_list, obj, group=self.group)
        return object_list

    def broadcast_object_list(self, object_list: list[Any], src: int, device: Any = None) -> list[Any]:
        dist.broadcast_object_list(object_list, src, group=self.group, device=device)
        return object_list

    def gather_object(self, obj: Any, object_gather_list: list[Any], dst: int = 0) -> list[Any]:
        dist.gather_object(obj, object_gather_list, dst, group=self.group)
        return object_gather_list

    def scatter_object_list(
        self, scatter_object_output_list: list[Any], scatter_object_input_list: list[Any], src: int = 0
    ) -> list[Any]:
        dist.scatter_object_list(scatter_object_output_list, scatter_object_input_list, src, group=self.group)
        return scatter_object_output_list

    def barrier(self, device_ids: list[int] | None = None) -> None:
        if self.group == dist.GroupMember.NON_GROUP_MEMBER:
            return
        dist.barrier(group=self.group, device_ids=device_ids)

    def monitored_barrier(
        self, timeout: datetime.timedelta | None = None, wait_all_ranks: bool = False
    ) -> None:
        dist.monitored_barrier(group=self.group, timeout=timeout, wait_all_ranks=wait_all_ranks)

    @staticmethod
    def _native_op(op: Any) -> Any:
        """``"sum"``/``"avg"``/... or a ``torch.distributed.ReduceOp`` member."""
        if not isinstance(op, str):
            return op
        if op.upper() not in _OPS:
            raise ValueError(
                f"TorchCollective: op={op!r} is not known. Allowed: {', '.join(o.lower() for o in _OPS)}."
            )
        return getattr(dist.ReduceOp, op.upper())


__all__ = ["TorchCollective"]
