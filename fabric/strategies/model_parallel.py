"""Tensor parallelism plus FSDP2 on a 2-D device mesh, arranged by the user's own function.

The user writes ``parallelize_fn(model, device_mesh) -> model`` with PyTorch's own tools (DTensor's
``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel`` on ``device_mesh["tensor_parallel"]``,
and ``fully_shard`` on ``device_mesh["data_parallel"]``); this strategy creates the mesh, calls the
function, materializes meta-device models, splits the data by the data-parallel rank and writes
checkpoints (DCP reshards them across layouts).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.nn import Module

from fabric.environments import ClusterEnvironment
from fabric.strategies._materialize import (
    check_initializable,
    has_meta,
    materialize,
    materialize_from_log,
    tensor_names,
)
from fabric.strategies.fsdp import FSDPStrategy
from fabric.strategies.parallel import DEFAULT_TIMEOUT


class ModelParallelStrategy(FSDPStrategy):
    """Call ``parallelize_fn(model, mesh)`` on a ``(data_parallel, tensor_parallel)`` device mesh.

    Args:
        parallelize_fn: applies tensor parallelism and/or ``fully_shard`` to the model and returns it.
        data_parallel_size: size of the mesh's first dimension; ``"auto"``: the number of nodes.
        tensor_parallel_size: size of the second; ``"auto"``: the devices per node.

    Example::

        def parallelize(model, mesh):
            parallelize_module(model, mesh["tensor_parallel"], {"w1": ColwiseParallel(), "w2": RowwiseParallel()})
            fully_shard(model, mesh=mesh["data_parallel"])
            return model

        fabric = Fabric(strategy=ModelParallelStrategy(parallelize, data_parallel_size=1, tensor_parallel_size=2), devices=2)
    """

    # parallelize_module and fully_shard change the module in place (DTensor parameters, hooks); a
    # parallelize_fn that returns a wrapper instead is reached the same way, through its forward
    module_wrapping = "in_place"

    def __init__(
        self,
        parallelize_fn: Callable[[Module, Any], Module],
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = "auto",
        cluster_environment: ClusterEnvironment | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        start_method: str = "popen",
        state_dict_type: str = "sharded",
    ) -> None:
        super().__init__(
            cluster_environment=cluster_environment,
            timeout=timeout,
            start_method=start_method,
            state_dict_type=state_dict_type,  # type: ignore[arg-type]
        )
        if not callable(parallelize_fn):
            raise TypeError(
                f"ModelParallelStrategy(parallelize_fn={parallelize_fn!r}): pass a function(model, mesh)."
            )
        for name, value in (
            ("data_parallel_size", data_parallel_size),
            ("tensor_parallel_size", tensor_parallel_size),
        ):
            if value != "auto" and (not isinstance(value, int) or value < 1):
                raise ValueError(f"ModelParallelStrategy({name}={value!r}): pass a positive int or 'auto'.")
        self._parallelize_fn = parallelize_fn
        self._dp_size = data_parallel_size
        self._tp_size = tensor_parallel_size

    def configure(
        self, parallel_devices: list[torch.device], num_nodes: int, environment: ClusterEnvironment | None
    ) -> None:
        super().configure(parallel_devices, num_nodes, environment)
        dp = num_nodes if self._dp_size == "auto" else int(self._dp_size)
        tp = self.num_processes if self._tp_size == "auto" else int(self._tp_size)
        world = num_nodes * self.num_processes
        if dp * tp != world:
            raise ValueError(
                f"ModelParallelStrategy(data_parallel_size={self._dp_size!r}, tensor_parallel_size={self._tp_size!r}) "
                f"gives a {dp} x {tp} mesh, but the run has {world} processes (devices x num_nodes). Choose sizes "
                f"whose product is {world}."
            )
        self._dp_size, self._tp_size = dp, tp

    @property
    def device_mesh(self) -> Any:
        """The 2-D mesh, with dimensions named ``"data_parallel"`` and ``"tensor_parallel"``."""
        return self._mesh

    def _create_mesh(self) -> Any:
        return init_device_mesh(
            self.root_device.type,
            (int(self._dp_size), int(self._tp_size)),
            mesh_dim_names=("data_parallel", "tensor_parallel"),
        )

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # Processes of one tensor-parallel group compute on the same batch.
        if self._mesh is None:
            return {"num_replicas": int(self._dp_size), "rank": self.global_rank // int(self._tp_size)}
        return {"num_replicas": int(self._dp_size), "rank": self._mesh["data_parallel"].get_local_rank()}

    def setup_module(self, module: Module) -> Module:
        meta = has_meta(module)
        log = self._init_log_for(module) if meta else None
        if meta and log is None:
            check_initializable(module)
        names = tensor_names(module, log) if log is not None else {}
        module = self._parallelize_fn(module, self._mesh)
        if not isinstance(module, Module):
            raise TypeError(
                f"parallelize_fn returned {type(module).__name__}; it must return the (parallelized) model."
            )
        if meta and log is not None:
            materialize_from_log(module, log, names, self.root_device)
        elif meta:
            materialize(module, self.root_device)
        self._sharded.add(module)
        return module


__all__ = ["ModelParallelStrategy"]
