"""Fully sharded data parallel on FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each process holds a shard of every parameter, gradient and optimizer state; FSDP2 gathers a layer's
parameters just before it runs and frees them after. This file sets up the mesh, maps the precision plugin
onto FSDP2's mixed-precision policy, shards the model and says how its states are saved. What to shard
is :mod:`fabric.strategies.fsdp_policy`; FSDP1's arguments are translated in
:mod:`fabric.strategies.fsdp_compat`; meta-device models get their values from
:mod:`fabric.strategies._deferred_init`. The engine is PyTorch's own.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import timedelta
from typing import Any, Literal

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.nn import Module
from torch.optim import Optimizer

from fabric.accelerators.accelerator import Accelerator
from fabric.checkpoint.states import (
    module_state,
    optimizer_state,
    optimizer_state_by_index,
    optimizer_state_by_name,
    parameter_names,
    set_module_state,
    set_optimizer_state,
)
from fabric.environments import ClusterEnvironment
from fabric.precision import MixedPrecision, Precision
from fabric.precision.fsdp import FSDPPrecision
from fabric.strategies._buffers import broadcast_buffers
from fabric.strategies._deferred_init import InitLog, InitRecorder
from fabric.strategies._materialize import (
    check_initializable,
    has_meta,
    materialize,
    materialize_from_log,
    take_init_log,
    tensor_names,
)
from fabric.strategies.fsdp_compat import (
    check_device_mesh,
    fully_shard_kwargs,
    mixed_precision_policy,
    offload_flag,
    sharding_strategy_name,
)
from fabric.strategies.fsdp_policy import (
    CONTAINERS,
    ShardingPolicy,
    apply_activation_checkpointing,
    as_predicate,
    default_policy,
)
from fabric.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy
from fabric.strategies.strategy import BackwardSyncControl
from fabric.utilities.allocator import return_large_blocks_to_system


class FSDPStrategy(ParallelStrategy, BackwardSyncControl):
    """Shard parameters, gradients and optimizer states across processes with FSDP2.

    Args:
        auto_wrap_policy: which submodules become their own FSDP unit (gathered and freed on their
            own): a set of module classes (e.g. ``{TransformerBlock}``) or a callable
            ``fn(module) -> bool``. Without one, each direct child of the model that holds parameters
            becomes a unit (the blocks of a ``Sequential`` or of a model's top level), so that only one
            block's parameters are ever gathered at a time.
        cpu_offload: keep sharded parameters, gradients and optimizer states in CPU memory.
        activation_checkpointing_policy: module classes (or a callable) whose activations are
            recomputed in backward instead of stored.
        reshard_after_forward: free gathered parameters after forward (``True``, least memory) or keep
            them for backward (``False``, less communication). Default: from ``sharding_strategy``.
        sharding_strategy: Lightning's names (or torch's ``ShardingStrategy``) mapped onto FSDP2:
            ``"FULL_SHARD"``; ``"SHARD_GRAD_OP"`` (no reshard after forward); ``"HYBRID_SHARD"`` (a 2-D
            ``(replicate, shard)`` mesh, sizes from ``device_mesh``, default ``(num_nodes, devices)``);
            ``"NO_SHARD"`` (every process holds everything: a ``(world_size, 1)`` mesh).
        device_mesh: ``(replicate, shard)`` sizes for hybrid sharding, or a ready ``DeviceMesh``.
        mixed_precision: FSDP2's ``MixedPrecisionPolicy`` or FSDP1's ``MixedPrecision`` (its
            ``param_dtype``/``reduce_dtype``); overrides what the precision plugin implies.
        activation_checkpointing: Lightning's older spelling of ``activation_checkpointing_policy``.
        **kwargs: passed to ``fully_shard`` (e.g. ``shard_placement_fn``, ``ignored_params``); FSDP1-only
            options raise an error that says what to use instead.
        state_dict_type: ``"sharded"`` (a directory, every process writes its shard) or ``"full"``
            (one file written by rank 0, readable by ``torch.load``).
        timeout: as for :class:`~fabric.strategies.ddp.DDPStrategy`.
        start_method: as for :class:`~fabric.strategies.ddp.DDPStrategy`.
        process_group_backend: as for :class:`~fabric.strategies.ddp.DDPStrategy`.

    Example::

        strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
        fabric = Fabric(strategy=strategy, devices=2, precision="bf16-mixed")
    """

    sharded_checkpoints = True
    module_wrapping = "in_place"  # fully_shard hooks the module's own forward

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        start_method: str = "popen",
        auto_wrap_policy: ShardingPolicy | None = None,
        cpu_offload: Any = False,
        activation_checkpointing_policy: ShardingPolicy | None = None,
        reshard_after_forward: bool | None = None,
        state_dict_type: Literal["sharded", "full"] = "sharded",
        sharding_strategy: Any = "FULL_SHARD",
        device_mesh: tuple[int, int] | Any = None,
        mixed_precision: Any = None,
        activation_checkpointing: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            precision=precision,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
        )
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(
                f"FSDPStrategy(state_dict_type={state_dict_type!r}): allowed 'sharded' or 'full'."
            )
        if activation_checkpointing is not None:
            if activation_checkpointing_policy is not None:
                raise ValueError(
                    "FSDPStrategy: pass `activation_checkpointing_policy` or the older `activation_checkpointing`, "
                    "not both."
                )
            layers = activation_checkpointing
            activation_checkpointing_policy = (
                set(layers) if isinstance(layers, (list, tuple, set)) else {layers}
            )
        self._wrap_policy = as_predicate(auto_wrap_policy, "auto_wrap_policy")
        self._checkpoint_policy = as_predicate(
            activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        self._offload = offload_flag(cpu_offload)
        self._sharding = sharding_strategy_name(sharding_strategy)
        if reshard_after_forward is None:
            reshard_after_forward = self._sharding not in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2")
        self.reshard_after_forward = reshard_after_forward
        self._device_mesh = check_device_mesh(device_mesh, self._sharding)
        self._mp_policy = mixed_precision_policy(mixed_precision)
        self._fully_shard_kwargs = fully_shard_kwargs(kwargs)
        self.state_dict_type = state_dict_type
        self._mesh: Any = None
        # Weak: the strategy must not keep every model it ever sharded alive.
        self._sharded: weakref.WeakSet[Module] = weakref.WeakSet()
        self._init_logs: list[InitLog] = []

    @property
    def cpu_offload(self) -> Any:
        """FSDP1's ``CPUOffload(offload_params=...)``, as Lightning's attribute holds it; FSDP2 offloads with
        ``CPUOffloadPolicy`` when ``offload_params`` is true."""
        from torch.distributed.fsdp import CPUOffload  # lazy: FSDP1's module is not needed to import fabric

        return CPUOffload(offload_params=self._offload)

    @property
    def sharding_strategy(self) -> Any:
        """torch's ``ShardingStrategy`` member, as Lightning's attribute holds it (``.name`` gives the string)."""
        from torch.distributed.fsdp import (
            ShardingStrategy,
        )  # lazy: FSDP1's module is not needed to import fabric

        return ShardingStrategy[self._sharding]

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        super().setup_environment()
        if self.root_device.type == "cpu":
            # gathered parameters are freed every step: have glibc return them (fabric/utilities/allocator.py)
            return_large_blocks_to_system()
        self._mesh = self._create_mesh()
        precision = self.precision
        if isinstance(precision, MixedPrecision) and precision.scaler is not None:
            # heavy: torch.distributed.fsdp (~1 s) loads only when used
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            # Each process sees only its shard's gradients: the inf/nan check must agree across all.
            precision.scaler = ShardedGradScaler(self.root_device.type)

    def _create_mesh(self) -> Any:
        """A 1-D mesh over all processes; 2-D ``(replicate, shard)`` for ``HYBRID_SHARD`` and ``NO_SHARD``."""

        if isinstance(self._device_mesh, DeviceMesh):
            return self._device_mesh
        if self._sharding == "NO_SHARD":
            shape: tuple[int, ...] = (self.world_size, 1)  # replicate everywhere, shard over one process
        elif self._sharding in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
            # Default: shard within a node (fast links), replicate across nodes.
            shape = self._device_mesh or (self.num_nodes, self.world_size // self.num_nodes)
            if shape[0] * shape[1] != self.world_size:
                raise ValueError(
                    f"FSDPStrategy(device_mesh={shape}): the (replicate, shard) sizes multiply to "
                    f"{shape[0] * shape[1]}, but there are {self.world_size} processes. Pass sizes whose product "
                    f"is {self.world_size}."
                )
        else:
            return init_device_mesh(self.root_device.type, (self.world_size,))
        return init_device_mesh(self.root_device.type, shape, mesh_dim_names=("replicate", "shard"))

    def module_to_device(self, module: Module) -> None:
        if self._offload or has_meta(module):
            return  # sharding first; a meta model is materialized shard by shard
        module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager:
        """With ``empty_init=True`` the model is created on the meta device: no memory, no init yet.

        ``setup`` then shards it and gives each process only its shard, initialized with the values
        a normal seeded init gives: the construction's operations are recorded and replayed shard by
        shard (see :mod:`fabric.strategies._deferred_init`), so a model's own initialization (e.g. a
        ``_init_weights`` applied in ``__init__``) is kept exactly.
        """
        stack = ExitStack()
        stack.enter_context(torch.device("meta") if empty_init else self.root_device)
        stack.enter_context(self.precision.module_init_context())
        if empty_init:
            recorder = InitRecorder(self.root_device if not self._offload else torch.device("cpu"))
            self._init_logs.append(recorder.log)
            stack.enter_context(recorder)
        return stack

    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        """Shard the model, then point the optimizers at the sharded parameters.

        FSDP2 replaces each parameter by a sharded one, so an optimizer created before ``setup`` would
        update parameters that no longer exist; its parameter groups are rewired here by name (its
        state must still be empty).
        """
        names = parameter_names([module])
        sharded = self.setup_module(module)
        new_names = parameter_names([sharded])  # without the names activation checkpointing inserts
        new_params = {new_names[id(p)]: p for p in sharded.parameters()}
        for optimizer in optimizers:
            if optimizer.state:
                raise ValueError(
                    "FSDPStrategy: the optimizer already has state (it stepped before `fabric.setup`). Create "
                    "or reset it before setup, or load its state with `fabric.load` after setup."
                )
            for group in optimizer.param_groups:
                group["params"] = [new_params[names[id(p)]] for p in group["params"]]
        return sharded, optimizers

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        """Check that the optimizer updates the parameters of a model sharded by this strategy."""
        first = next((p for group in optimizer.param_groups for p in group["params"]), None)
        for module in self._sharded:
            if any(p is first for p in module.parameters()):
                return optimizer
        raise ValueError(
            "FSDPStrategy: the optimizer's parameters do not belong to a model set up with `fabric.setup_module`. "
            "Create the optimizer from `model.parameters()` of the set-up model."
        )

    def setup_module(self, module: Module) -> Module:
        # heavy: torch.distributed.fsdp (~1 s) loads only when used
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        if self._checkpoint_policy is not None:
            apply_activation_checkpointing(module, self._checkpoint_policy)
        precision = self.precision
        mp_policy = MixedPrecisionPolicy()
        if self._mp_policy is not None:
            mp_policy = self._mp_policy
        elif isinstance(precision, FSDPPrecision):
            mp_policy = precision.mixed_precision_policy
        elif isinstance(precision, MixedPrecision):
            # Compute in the low dtype; reduce gradients in float32 so that no precision is lost summing.
            mp_policy = MixedPrecisionPolicy(param_dtype=precision.autocast_dtype, reduce_dtype=torch.float32)
        # Pinned memory only speeds up copies to an accelerator; without one, pinning fails.
        pin = self.root_device.type != "cpu"
        offload = CPUOffloadPolicy(pin_memory=pin) if self._offload else OffloadPolicy()
        meta = has_meta(module)
        log = self._init_log_for(module) if meta else None
        if meta and log is None:
            check_initializable(module)
        names = tensor_names(module, log) if log is not None else {}
        kwargs = {
            "mesh": self._mesh,
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": mp_policy,
            "offload_policy": offload,
            **self._fully_shard_kwargs,
        }
        policy = self._wrap_policy or default_policy(module)
        # Children before parents: each unit holds the parameters not already in a smaller unit.
        for submodule in reversed(list(module.modules())):
            if submodule is not module and not isinstance(submodule, CONTAINERS) and policy(submodule):
                fully_shard(submodule, **kwargs)
        fully_shard(module, **kwargs)
        if meta:
            device = self.root_device if not self._offload else torch.device("cpu")
            if log is not None:
                materialize_from_log(module, log, names, device)
            else:
                materialize(module, device)
        self._sharded.add(module)
        broadcast_buffers(module)  # rank 0's buffers everywhere, as DDP starts (see strategies/_buffers.py)
        return module

    def prepare_save(self, state: Mapping[str, Any]) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank before a save, as DDP keeps them: the
        checkpoint holds rank 0's, and every rank evaluates like rank 0 after the save."""
        for value in state.values():
            if isinstance(value, Module):
                broadcast_buffers(value)

    def _init_log_for(self, module: Module) -> InitLog | None:
        """The recording of ``module``'s construction under ``init_module(empty_init=True)``, if any."""
        return take_init_log(
            self._init_logs, module, self.root_device if not self._offload else torch.device("cpu")
        )

    # ---------------------------------------------------------------------- steps
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager:
        """Skip FSDP2's gradient reduce-scatter in the backward passes inside the context.

        Memory cost: skipped gradients are kept *unsharded* (full size, like DDP) until the next
        synchronized backward, so accumulating costs the memory of one full gradient per process.
        """
        return _gradient_sync_disabled(module) if enabled else _nothing()

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_layout(self) -> Literal["file", "sharded"]:
        return "sharded" if self.state_dict_type == "sharded" else "file"

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        return module_state(module, full=True)

    def get_optimizer_state(
        self, optimizer: Optimizer, module: Module | None = None, every_rank: bool = False
    ) -> dict[str, Any]:
        # The index-keyed form of `optimizer.state_dict()`: loads with plain torch too.
        model = self._model_of(optimizer, module)
        return optimizer_state_by_index(optimizer_state(model, optimizer, full=True, every_rank=every_rank))

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        set_module_state(module, state_dict, strict=strict, full=True)

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: dict[str, Any], module: Module | None = None
    ) -> None:
        module = self._model_of(optimizer, module)
        by_name = optimizer_state_by_name(state_dict, optimizer, parameter_names([module]))
        set_optimizer_state(module, optimizer, by_name, full=True)

    @staticmethod
    def _model_of(optimizer: Optimizer, module: Module | None) -> Module:
        if module is None:
            raise KeyError(
                f"FSDP keeps {type(optimizer).__name__}'s state by parameter name, so saving or loading it needs "
                f"the model it updates: set both up with `fabric.setup(model, optimizer)`."
            )
        return module


@contextmanager
def _gradient_sync_disabled(module: Module) -> Iterator[None]:
    from torch.distributed.fsdp import FSDPModule  # heavy: torch.distributed.fsdp (~1 s) loads only when used

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True, recurse=False)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


__all__ = ["FSDPStrategy"]
