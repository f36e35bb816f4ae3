"""Data parallel over several XLA devices with SPMD: ``strategy="xla"``.

torch-xla's SPMD mode runs ONE process per host over all of the host's XLA devices. The program is
written for the global batch; ``mark_sharding`` tells XLA how a tensor is laid out over a device mesh,
and XLA's partitioner inserts the communication (e.g. the gradient all-reduce) itself. Here the mesh
is one axis (``"data"``) over all devices; parameters are replicated and every batch is sharded along
its first dimension, which is data parallelism.

What the ranks mean under SPMD (and how it differs from DDP):

- ``world_size`` and ``global_rank`` count *processes* (hosts), not devices: ``1`` and ``0`` on one
  host. :attr:`XLAStrategy.num_devices` counts the devices the batch is sharded over.
- ``setup_dataloaders`` gives the one process the whole (global) batch; ``batch_to_device`` shards it
  over the devices. With several hosts, each host reads its share (a ``DistributedSampler`` over
  hosts) and contributes it as its slice of the global batch.
- A loss or metric computed on the XLA device is already global (XLA reduces over the shards), so
  ``all_reduce``, ``all_gather`` and ``broadcast`` have nothing to combine on one host and return their
  input (``all_gather`` with a leading dimension of size 1, the world size). ``barrier`` runs the
  pending graph.

Replica-style XLA (one process per device, ``xmp.spawn``) is not offered: SPMD is torch-xla's
recommended path, and the only one that can be run and tested on XLA's CPU back end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from fabric.accelerators.accelerator import Accelerator
from fabric.precision import Precision
from fabric.strategies.fsdp_policy import ShardingPolicy
from fabric.strategies.strategy import Strategy
from fabric.strategies.xla_common import XLAStepMixin
from fabric.utilities.apply import move_to_device
from fabric.utilities.types import ReduceOp

StateDictType = Literal["full", "sharded"]


class XLAStrategy(XLAStepMixin, Strategy):
    """Data parallel with torch-xla SPMD over all XLA devices of the host(s), in one process per host.

    Args:
        state_dict_type: ``"full"`` (default): ``fabric.save`` writes one file with CPU tensors, which
            loads into any strategy and device count. ``"sharded"``: a ``torch.distributed.checkpoint``
            directory written through torch-xla's SPMD planner (each device's shard), for models too
            large to gather in one host's memory.
        activation_checkpointing_policy: module classes (or a callable ``fn(module) -> bool``) whose
            activations are recomputed in the backward instead of kept, as in ``FSDPStrategy``; applied with
            torch-xla's ``checkpoint_module``.

    Example::

        fabric = Fabric(accelerator="tpu", devices="auto", strategy="xla")
    """

    #: name of the mesh axis the batch is sharded along
    mesh_axis = "data"
    module_wrapping = "none"  # SPMD shards the batches; the module itself is not wrapped

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        state_dict_type: StateDictType = "full",
        activation_checkpointing_policy: ShardingPolicy | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision)
        self._init_xla_options(activation_checkpointing_policy)
        if state_dict_type not in ("full", "sharded"):
            raise ValueError(
                f"{type(self).__name__}(state_dict_type={state_dict_type!r}): allowed 'full' or 'sharded'."
            )
        self.state_dict_type = state_dict_type
        self._num_devices = 0
        self._mesh: Any = None
        self._mark_sharding: Callable[..., Any] | None = None
        self._process_count = 1
        self._process_index = 0

    # ------------------------------------------------------------------ configure
    def configure(self, parallel_devices: list[torch.device], num_nodes: int, environment: Any) -> None:
        """Learn the device count from the connector (called once, before set-up)."""
        if num_nodes != 1:
            raise ValueError(
                f"Fabric(strategy='xla', num_nodes={num_nodes}): under SPMD each host runs one process and "
                f"torch-xla finds the hosts of a TPU pod itself. Leave num_nodes=1 and start the same script "
                f"on every host (e.g. `gcloud compute tpus tpu-vm ssh ... --worker=all --command=...`)."
            )
        if environment is not None:
            raise ValueError(
                f"Fabric(strategy='xla', plugins=[{type(environment).__name__}(...)]): XLA strategies take no "
                f"cluster environment; torch-xla's runtime knows the hosts."
            )
        self._num_devices = len(parallel_devices)

    @property
    def num_devices(self) -> int:
        """How many XLA devices the batch is sharded over (the whole mesh)."""
        return self._num_devices

    @property
    def mesh(self) -> Any:
        """The ``torch_xla.distributed.spmd.Mesh`` of this run (after set-up)."""
        return self._mesh

    # ------------------------------------------------------------------- topology
    @property
    def root_device(self) -> torch.device:
        # Under SPMD the process computes on one virtual device that stands for the whole mesh.
        return torch.device("xla", 0)

    @property
    def world_size(self) -> int:
        return self._process_count

    @property
    def global_rank(self) -> int:
        return self._process_index

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        if self._process_count == 1:
            return None  # one process reads the global batch; the devices get their shard from XLA
        return {"num_replicas": self._process_count, "rank": self._process_index}

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        self._setup_xla()
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        xr.use_spmd()
        count = int(xr.global_runtime_device_count())
        if self._num_devices not in (0, count):
            raise RuntimeError(
                f"{type(self).__name__}: the connector asked for {self._num_devices} XLA devices but SPMD sees "
                f"{count}. Pass devices={count} or 'auto'."
            )
        self._num_devices = count
        self._process_count = int(xr.process_count())
        self._process_index = int(xr.process_index())
        self._mesh = self._create_mesh(xs, np.arange(count))
        self._mark_sharding = xs.mark_sharding
        super().setup_environment()

    def _create_mesh(self, xs: Any, device_ids: Any) -> Any:
        mesh = xs.Mesh(device_ids, (len(device_ids),), (self.mesh_axis,))
        xs.set_global_mesh(mesh)
        return mesh

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        """Move the batch to XLA and shard every tensor along its first (batch) dimension."""
        batch = move_to_device(batch, device or self.root_device)
        if isinstance(batch, Tensor):
            return self._shard_batch_tensor(batch)
        # heavy: lightning_utilities (~35 ms) loads only when used
        from lightning_utilities.core.apply_func import apply_to_collection

        return apply_to_collection(batch, Tensor, self._shard_batch_tensor)

    def _shard_batch_tensor(self, tensor: Tensor) -> Tensor:
        if tensor.dim() == 0 or tensor.device.type != "xla":
            return tensor
        assert self._mark_sharding is not None
        self._mark_sharding(tensor, self._mesh, (self.mesh_axis,) + (None,) * (tensor.dim() - 1))
        return tensor

    # --------------------------------------------------------------- collectives
    def all_reduce(self, tensor: Tensor, reduce_op: ReduceOp = "mean") -> Tensor:
        """Identity on one host: a tensor computed from the sharded global batch is already global."""
        self._single_process_only("all_reduce")
        if reduce_op not in ("sum", "mean", "max", "min"):
            raise ValueError(f"all_reduce(reduce_op={reduce_op!r}): allowed 'sum', 'mean', 'max', 'min'.")
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        self._single_process_only("all_gather")
        return tensor.unsqueeze(0)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        self._single_process_only("broadcast")
        return obj

    def gather_object(self, obj: Any) -> list[Any]:
        self._single_process_only("gather_object")
        return [obj]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self._single_process_only("reduce_boolean_decision")
        return decision

    def barrier(self, name: str | None = None) -> None:
        """Run the pending XLA graph; with several hosts, also meet the other hosts."""
        if self._mark_step is not None:
            self._mark_step()
        if self._process_count > 1:  # pragma: no cover - needs a multi-host TPU pod
            import torch_xla.core.xla_model as xm

            xm.rendezvous(name or "fabric_barrier")

    def _single_process_only(self, name: str) -> None:
        if self._process_count > 1:  # pragma: no cover - needs a multi-host TPU pod
            raise NotImplementedError(
                f"{type(self).__name__}.{name}() across {self._process_count} hosts is not implemented: under SPMD "
                f"tensors on the XLA device are already global (no collective needed); host-side values "
                f"cannot be exchanged by this strategy yet."
            )

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_layout(self) -> Literal["file", "sharded"]:
        """``"sharded"``: a DCP directory in the layout of Fabric's FSDP checkpoints (any strategy loads it)."""
        return "sharded" if self.state_dict_type == "sharded" else "file"

    def save_shards(self, shards: dict[str, Any], directory: str) -> None:
        """Each device's shard through torch-xla's ``SPMDSavePlanner`` (one process drives every device)."""
        # heavy: torch.distributed.checkpoint (~1 s) loads only when used
        import torch.distributed.checkpoint as dcp
        from torch_xla.experimental.distributed_checkpoint import SPMDSavePlanner

        dcp.save(
            shards, storage_writer=dcp.FileSystemWriter(directory), planner=SPMDSavePlanner(), no_dist=True
        )
