"""Fully sharded data parallel on FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each process holds a shard of every parameter, gradient and optimizer state; FSDP2 gathers a layer's
parameters just before it runs and frees them after. This file chooses what to shard (a policy), maps
the precision plugin onto FSDP2's mixed-precision policy, creates models on the meta device with
real initial values, and writes sharded or full checkpoints. The engine is PyTorch's own.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import timedelta
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric.accelerators import Accelerator
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
from fabric.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy
from fabric.strategies.strategy import BackwardSyncControl

ShardingPolicy = set[type[Module]] | Callable[[Module], bool]


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
            them for backward (``False``, less communication).
        state_dict_type: ``"sharded"`` (a directory, every process writes its shard) or ``"full"``
            (one file written by rank 0, readable by ``torch.load``).
        timeout, start_method, process_group_backend: as for :class:`~fabric.strategies.ddp.DDPStrategy`.

    Example::

        strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
        fabric = Fabric(strategy=strategy, devices=2, precision="bf16-mixed")
    """

    sharded_checkpoints = True

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
        cpu_offload: bool = False,
        activation_checkpointing_policy: ShardingPolicy | None = None,
        reshard_after_forward: bool = True,
        state_dict_type: Literal["sharded", "full"] = "sharded",
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
        self._wrap_policy = _as_predicate(auto_wrap_policy, "auto_wrap_policy")
        self._checkpoint_policy = _as_predicate(
            activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        self.cpu_offload = cpu_offload
        self.reshard_after_forward = reshard_after_forward
        self.state_dict_type = state_dict_type
        self._mesh: Any = None
        # Weak: the strategy must not keep every model it ever sharded alive.
        self._sharded: weakref.WeakSet[Module] = weakref.WeakSet()

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        super().setup_environment()
        self._mesh = self._create_mesh()
        precision = self.precision
        if isinstance(precision, MixedPrecision) and precision.scaler is not None:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            # Each process sees only its shard's gradients: the inf/nan check must agree across all.
            precision.scaler = ShardedGradScaler(self.root_device.type)

    def _create_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.root_device.type, (self.world_size,))

    def module_to_device(self, module: Module) -> None:
        if self.cpu_offload or _has_meta(module):
            return  # sharding first; a meta model is materialized shard by shard
        module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager:
        """With ``empty_init=True`` the model is created on the meta device: no memory, no init yet.

        ``setup`` then shards it and gives each process only its shard, initialized with the values
        a normal seeded init gives (each module's ``reset_parameters``).
        """
        stack = ExitStack()
        stack.enter_context(torch.device("meta") if empty_init else self.root_device)
        stack.enter_context(self.precision.module_init_context())
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
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        if self._checkpoint_policy is not None:
            _apply_activation_checkpointing(module, self._checkpoint_policy)
        precision = self.precision
        mp_policy = MixedPrecisionPolicy()
        if isinstance(precision, MixedPrecision):
            # Compute in the low dtype; reduce gradients in float32 so that no precision is lost summing.
            mp_policy = MixedPrecisionPolicy(param_dtype=precision.autocast_dtype, reduce_dtype=torch.float32)
        # Pinned memory only speeds up copies to an accelerator; without one, pinning fails.
        pin = self.root_device.type != "cpu"
        offload = CPUOffloadPolicy(pin_memory=pin) if self.cpu_offload else OffloadPolicy()
        meta = _has_meta(module)
        if meta:
            _check_initializable(module)
        kwargs = {
            "mesh": self._mesh,
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": mp_policy,
            "offload_policy": offload,
        }
        policy = self._wrap_policy or _default_policy(module)
        # Children before parents: each unit holds the parameters not already in a smaller unit.
        for submodule in reversed(list(module.modules())):
            if submodule is not module and policy(submodule):
                fully_shard(submodule, **kwargs)
        fully_shard(module, **kwargs)
        if meta:
            _materialize(module, self.root_device if not self.cpu_offload else torch.device("cpu"))
        self._sharded.add(module)
        return module

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

    def get_optimizer_state(self, optimizer: Optimizer, module: Module | None = None) -> dict[str, Any]:
        # The index-keyed form of `optimizer.state_dict()`: loads with plain torch too.
        return optimizer_state_by_index(
            optimizer_state(self._model_of(optimizer, module), optimizer, full=True)
        )

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


# --------------------------------------------------------------------------- helpers
def _as_predicate(policy: ShardingPolicy | None, name: str) -> Callable[[Module], bool] | None:
    if policy is None:
        return None
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        if not all(isinstance(c, type) and issubclass(c, Module) for c in classes):
            raise TypeError(
                f"FSDPStrategy({name}={policy!r}): a set of policies must hold nn.Module classes."
            )
        return lambda module: isinstance(module, classes)
    if callable(policy):
        return policy
    raise TypeError(
        f"FSDPStrategy({name}={policy!r}): pass a set of module classes or a callable(module) -> bool."
    )


def _default_policy(model: Module) -> Callable[[Module], bool]:
    """Each direct child of ``model`` that holds parameters is its own unit."""
    children = {id(child) for child in model.children() if any(True for _ in child.parameters())}
    return lambda module: id(module) in children


def _has_meta(module: Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def _check_initializable(module: Module) -> None:
    """Every module holding tensors of its own must be able to re-create them (``reset_parameters``)."""
    bad = [
        name or type(module).__name__
        for name, sub in module.named_modules()
        if (any(True for _ in sub.parameters(recurse=False)) or any(True for _ in sub.buffers(recurse=False)))
        and not callable(getattr(sub, "reset_parameters", None))
    ]
    if bad:
        raise TypeError(
            f"init_module(empty_init=True) created the model on the meta device, but {bad} hold parameters or "
            f"buffers and have no `reset_parameters()` to give them values, so they would hold garbage. Add a "
            f"`reset_parameters` method to those modules, or create the model with `empty_init=False`."
        )


def _materialize(module: Module, device: torch.device) -> None:
    """Allocate each process's shards and fill them with the values a normal seeded init gives.

    Modules are initialized one at a time, in ``modules()`` order (the order in which a normal
    construction runs their ``reset_parameters``): each module's parameters are created full-size,
    initialized, and this process's shard is copied out; the full tensors are freed before the next
    module, so at most one module's full parameters exist at any time.
    """
    module.to_empty(device=device)
    for sub in module.modules():
        own = dict(sub.named_parameters(recurse=False))
        buffers = dict(sub.named_buffers(recurse=False))
        if not own and not buffers:
            continue
        full = {
            name: torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), p.requires_grad)
            for name, p in own.items()
        }
        originals = {name: sub._parameters[name] for name in own}
        sub._parameters.update(full)  # full-size stand-ins, for the length of reset_parameters
        try:
            sub.reset_parameters()  # type: ignore[operator]
        finally:
            sub._parameters.update(originals)
        with torch.no_grad():
            for name, sharded in originals.items():
                assert sharded is not None
                _copy_shard(full[name].detach(), sharded)


def _copy_shard(full: Tensor, sharded: Tensor) -> None:
    """Copy this process's part of ``full`` into ``sharded`` (a DTensor on any mesh and placements)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(sharded, DTensor):
        sharded.copy_(full)
        return
    shape, offset = compute_local_shape_and_global_offset(full.shape, sharded.device_mesh, sharded.placements)
    part = full[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
    sharded.to_local().copy_(part.to(sharded.dtype))


def _apply_activation_checkpointing(module: Module, policy: Callable[[Module], bool]) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(module, check_fn=policy)


@contextmanager
def _gradient_sync_disabled(module: Module) -> Iterator[None]:
    from torch.distributed.fsdp import FSDPModule

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
