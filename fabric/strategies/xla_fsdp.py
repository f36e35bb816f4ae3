"""Fully sharded data parallel on XLA devices with SPMD (torch-xla's FSDPv2): ``strategy="xla_fsdp"``.

Every parameter is sharded along its largest dimension over the ``"fsdp"`` axis of a one-axis mesh,
and the batch along its first dimension; XLA's SPMD partitioner gathers parameters for the forward
and reduce-scatters gradients. As for :class:`~fabric.strategies.xla.XLAStrategy`, one process per
host drives all its devices, and ranks count processes, not devices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor
from torch.nn import Module

from fabric.accelerators.accelerator import Accelerator
from fabric.precision import Precision
from fabric.strategies.fsdp_policy import ShardingPolicy
from fabric.strategies.xla import StateDictType, XLAStrategy

WrapPolicy = set[type[Module]] | Callable[..., bool]


class XLAFSDPStrategy(XLAStrategy):
    """Shard parameters, gradients and optimizer states over the XLA devices with SPMD FSDPv2
    (``torch_xla.experimental.spmd_fully_sharded_data_parallel.SpmdFullyShardedDataParallel``).

    Args:
        auto_wrap_policy: submodules that become their own FSDPv2 unit: a set of module classes
            (e.g. ``{TransformerBlock}``) or torch-xla's policy callable. Default: only the root.
        shard_output: ``fn(output, mesh)`` that marks the sharding of the model's output. Default:
            :func:`shard_batch_dimension`, every tensor in the output (a tensor, a tuple, a dict, a dataclass,
            or ``transformers``' ``ModelOutput``) along its first dimension, the batch.
        state_dict_type: ``"full"`` (one CPU file) or ``"sharded"`` (default: a directory holding each
            device's shard, written by torch-xla's SPMD checkpoint planner).
        activation_checkpointing_policy: module classes (or a callable ``fn(module) -> bool``) whose
            activations are recomputed in the backward, as in ``FSDPStrategy`` (torch-xla's ``checkpoint_module``).

    Example::

        fabric = Fabric(accelerator="tpu", devices="auto", strategy="xla_fsdp", precision="bf16-true")
    """

    mesh_axis = "fsdp"  # the axis name FSDPv2 requires
    module_wrapping = "wrapper"  # SpmdFullyShardedDataParallel around the module

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        state_dict_type: StateDictType = "sharded",
        auto_wrap_policy: WrapPolicy | None = None,
        shard_output: Callable[[Any, Any], None] | None = None,
        activation_checkpointing_policy: ShardingPolicy | None = None,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            precision=precision,
            state_dict_type=state_dict_type,
            activation_checkpointing_policy=activation_checkpointing_policy,
        )
        self._auto_wrap_policy = auto_wrap_policy
        self._shard_output = shard_output

    def setup_module(self, module: Module) -> Module:
        """Shard ``module``'s parameters in place; return the FSDPv2 wrapper that runs its forward.

        The parameters stay the same objects (only their sharding changes), so an optimizer created
        before ``setup`` keeps updating them.
        """
        from torch_xla.experimental.spmd_fully_sharded_data_parallel import SpmdFullyShardedDataParallel

        module = super().setup_module(module)  # activation checkpointing, if asked for
        return SpmdFullyShardedDataParallel(
            module,
            mesh=self._mesh,
            shard_output=self._shard_output or functools.partial(shard_batch_dimension, axis=self.mesh_axis),
            auto_wrap_policy=self._wrap_policy(),
        )

    def _wrap_policy(self) -> Callable[..., bool] | None:
        policy = self._auto_wrap_policy
        if policy is None or callable(policy):
            return policy
        if isinstance(policy, (set, frozenset, list, tuple)):
            from torch_xla.distributed.fsdp.wrap import transformer_auto_wrap_policy

            return functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=set(policy))
        raise TypeError(
            f"XLAFSDPStrategy(auto_wrap_policy={policy!r}): pass a set of module classes or a policy callable."
        )


def shard_batch_dimension(output: Any, mesh: Any, axis: str = "fsdp") -> None:
    """Mark every XLA tensor of ``output`` as sharded along its first (batch) dimension over ``axis``.

    FSDPv2 needs the sharding of the model's output to propagate the batch sharding back into the backward.
    torch-xla's own default takes a tensor or the first element of a tuple and refuses anything else, which
    refuses ``transformers``' outputs (``ModelOutput``: a dict and a dataclass), where the tensor a user
    means is ``logits`` (as in ``transformers``' own FSDPv2 support) and ``loss`` is a scalar. Here the
    output is walked like a batch: tensors, mappings (``ModelOutput`` included), dataclasses, tuples and
    lists; scalars stay replicated and other objects (a key-value cache) are left alone. A sharding is a
    layout hint only: it never changes the values, so a tensor whose first dimension is not the batch
    is still computed right.
    """
    import torch_xla.distributed.spmd as xs  # torch-xla is an optional engine

    def visit(value: Any) -> None:
        if isinstance(value, Tensor):
            if value.dim() > 0 and value.device.type == "xla":
                xs.mark_sharding(value, mesh, (axis,) + (None,) * (value.dim() - 1))
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name))
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)

    visit(output)
