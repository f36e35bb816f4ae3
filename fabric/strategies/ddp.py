"""Distributed data parallel: every process holds the whole model; gradients are averaged in backward.

The model wrapper is PyTorch's own ``DistributedDataParallel``; process group, ranks and collectives
come from :class:`ParallelStrategy`.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

from fabric.accelerators.accelerator import Accelerator
from fabric.environments import ClusterEnvironment
from fabric.precision import Precision
from fabric.strategies.parallel import DEFAULT_TIMEOUT, CollectiveError, ParallelStrategy
from fabric.strategies.strategy import BackwardSyncControl, Strategy
from fabric.utilities.compiled import unwrap_compiled

__all__ = ["DEFAULT_TIMEOUT", "CollectiveError", "DDPStrategy"]


class DDPStrategy(ParallelStrategy, BackwardSyncControl):
    """Data-parallel training with ``torch.nn.parallel.DistributedDataParallel``.

    Args:
        start_method: ``"popen"`` re-runs the user's command for each extra process (scripts);
            ``"spawn"``, ``"fork"`` or ``"forkserver"`` start processes with multiprocessing and need
            ``fabric.launch(fn)`` (``"fork"`` works from notebooks). Lightning's spellings.
        process_group_backend: ``"gloo"``, ``"nccl"``, ...; default: nccl on CUDA, gloo otherwise.
        timeout: how long a collective waits for the other processes before failing.
        **ddp_kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters``,
            ``static_graph``, ``gradient_as_bucket_view``, ...).

    Example::

        fabric = Fabric(strategy=DDPStrategy(timeout=timedelta(minutes=5), static_graph=True), devices=2)
    """

    module_wrapping = "wrapper"  # DistributedDataParallel around the module

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        start_method: str = "popen",
        checkpoint_io: Any = None,
        **ddp_kwargs: Any,
    ) -> None:
        if checkpoint_io is not None:
            raise ValueError(
                f"DDPStrategy(checkpoint_io={checkpoint_io!r}): there is no pluggable checkpoint IO; `fabric.save` and "
                f"`fabric.load` write and verify checkpoints. Remove the argument."
            )
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            precision=precision,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
        )
        self._ddp_kwargs = ddp_kwargs

    def setup_module(self, module: Module) -> Module:
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return DistributedDataParallel(module=module, device_ids=device_ids, **self._ddp_kwargs)

    def setup_extra_parameters(
        self, parameters: list[torch.Tensor], optimizer: Any, move: bool = True
    ) -> None:
        """Train them as DDP trains the model's: the same start on every process (rank 0's values), and
        each gradient averaged over the processes as soon as it is accumulated.

        Lightning leaves them alone, so every process steps them with its own gradient and the copies
        drift apart. The average runs in each backward, also inside ``no_backward_sync`` (the
        accumulated gradient is then still the average of every micro-batch's).
        """
        Strategy.setup_extra_parameters(self, parameters, optimizer, move=move)
        if self.world_size < 2:
            return

        average = functools.partial(_average_gradient, world_size=self.world_size)
        for parameter in parameters:
            dist.broadcast(parameter.data, src=0)
            parameter.register_post_accumulate_grad_hook(average)

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager:
        """DDP's ``no_sync``: gradients accumulate locally; the next synced backward averages them all.

        The forward pass must run inside the context too: DDP decides at forward time whether the
        coming backward reduces gradients.
        """
        if not enabled:
            return nullcontext()
        module = unwrap_compiled(module)[0]  # compiled after wrapping (`setup(_reapply_compile=True)`)
        if not isinstance(module, DistributedDataParallel):
            raise TypeError(
                f"no_backward_sync needs the module returned by `fabric.setup`, got {type(module).__name__}."
            )
        return module.no_sync()

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        return module.state_dict()

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        module.load_state_dict(state_dict, strict=strict)


def _average_gradient(parameter: torch.Tensor, world_size: int) -> None:
    """Average the gradient of a parameter outside the model over the processes (a backward hook)."""

    if parameter.grad is not None:
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad.div_(world_size)
