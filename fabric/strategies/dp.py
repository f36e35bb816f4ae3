"""Lightning's ``strategy="dp"``: one process drives every device through ``torch.nn.DataParallel``.

PyTorch recommends DDP (one process per device) over ``DataParallel``, and so do we; this strategy
exists so that a Lightning script with ``strategy="dp"`` runs unchanged. There is one process, hence
no process group, no launcher and no sampler: ranks are 0, the world size is 1, and collectives
return their input (``all_reduce`` averages the per-device values ``DataParallel`` gathered, as
Lightning's does).

Example::

    fabric = Fabric(accelerator="cuda", devices=2, strategy="dp")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import DataParallel, Module

from fabric.accelerators.accelerator import Accelerator
from fabric.checkpoint.checkpoint_io import CheckpointIO
from fabric.environments import ClusterEnvironment
from fabric.precision import Precision
from fabric.strategies.parallel import ParallelStrategy
from fabric.strategies.strategy import Strategy
from fabric.utilities.types import ReduceOp

__all__ = ["DataParallelStrategy"]


class DataParallelStrategy(ParallelStrategy):
    """Replicate the model on each of ``parallel_devices`` in one process; each replica gets a slice of the batch."""

    module_wrapping = "wrapper"  # DataParallel around the module

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision: Precision | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, parallel_devices=parallel_devices, precision=precision)
        self.start_method = None  # one process: nothing to start
        if checkpoint_io is not None:
            self.checkpoint_io = checkpoint_io

    def configure(
        self, parallel_devices: list[torch.device], num_nodes: int, environment: ClusterEnvironment | None
    ) -> None:
        """One process on one node: no cluster environment to consult."""
        if num_nodes != 1:
            raise ValueError(
                f"DataParallelStrategy(num_nodes={num_nodes}): 'dp' runs in one process on one machine. "
                f"Use strategy='ddp' to train on several nodes."
            )
        if self.parallel_devices is None:
            self.parallel_devices = parallel_devices

    @property
    def root_device(self) -> torch.device:
        assert self.parallel_devices is not None
        return self.parallel_devices[0]

    # One process: the single-process topology of the base class (ranks 0, world size 1), not the
    # cluster-environment lookups ParallelStrategy adds.
    global_rank = Strategy.global_rank
    local_rank = Strategy.local_rank
    node_rank = Strategy.node_rank
    world_size = Strategy.world_size

    @property
    def distributed_sampler_kwargs(self) -> None:  # type: ignore[override]
        return None  # one process sees the whole dataset; DataParallel splits each batch

    def setup_environment(self) -> None:
        Strategy.setup_environment(self)  # the device only: there is no process group

    def setup_module(self, module: Module) -> DataParallel:
        return DataParallel(module=module, device_ids=self.parallel_devices)

    def module_to_device(self, module: Module) -> None:
        module.to(self.root_device)

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return batch  # DataParallel scatters the batch to the devices itself

    def all_reduce(self, tensor: Any, reduce_op: ReduceOp | None = "mean", group: Any = None) -> Any:  # type: ignore[override]
        # heavy: lightning_utilities (~35 ms) loads only when used
        from lightning_utilities.core.apply_func import apply_to_collection

        def mean(t: Tensor) -> Tensor:
            return t.float().mean().to(t.dtype)

        return apply_to_collection(tensor, Tensor, mean)

    def all_gather(self, tensor: Tensor) -> Tensor:  # type: ignore[override]
        return Strategy.all_gather(self, tensor)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, *args: Any, **kwargs: Any) -> None:
        return None

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        if isinstance(module, DataParallel):
            module = module.module
        return super().get_module_state_dict(module)

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        if isinstance(module, DataParallel):
            module = module.module
        super().load_module_state_dict(module, state_dict, strict=strict)

    def teardown(self) -> None:
        Strategy.teardown(self)
