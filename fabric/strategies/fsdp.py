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
from fabric.precision.fsdp import FSDPPrecision
from fabric.strategies._deferred_init import InitLog, InitRecorder, replay_into
from fabric.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy
from fabric.strategies.strategy import BackwardSyncControl
from fabric.utilities.allocator import return_large_blocks_to_system

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
        timeout, start_method, process_group_backend: as for :class:`~fabric.strategies.ddp.DDPStrategy`.

    Example::

        strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
        fabric = Fabric(strategy=strategy, devices=2, precision="bf16-mixed")
    """

    sharded_checkpoints = True
    wraps_in_place = True  # fully_shard hooks the module's own forward

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
        self._wrap_policy = _as_predicate(auto_wrap_policy, "auto_wrap_policy")
        self._checkpoint_policy = _as_predicate(
            activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        self.cpu_offload = _offload_flag(cpu_offload)
        self.sharding_strategy = _sharding_strategy_name(sharding_strategy)
        if reshard_after_forward is None:
            reshard_after_forward = self.sharding_strategy not in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2")
        self.reshard_after_forward = reshard_after_forward
        self._device_mesh = _check_device_mesh(device_mesh, self.sharding_strategy)
        self._mp_policy = _mixed_precision_policy(mixed_precision)
        self._fully_shard_kwargs = _fully_shard_kwargs(kwargs)
        self.state_dict_type = state_dict_type
        self._mesh: Any = None
        # Weak: the strategy must not keep every model it ever sharded alive.
        self._sharded: weakref.WeakSet[Module] = weakref.WeakSet()
        self._init_logs: list[InitLog] = []

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        super().setup_environment()
        if self.root_device.type == "cpu":
            # gathered parameters are freed every step: have glibc return them (fabric/utilities/allocator.py)
            return_large_blocks_to_system()
        self._mesh = self._create_mesh()
        precision = self.precision
        if isinstance(precision, MixedPrecision) and precision.scaler is not None:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            # Each process sees only its shard's gradients: the inf/nan check must agree across all.
            precision.scaler = ShardedGradScaler(self.root_device.type)

    def _create_mesh(self) -> Any:
        """A 1-D mesh over all processes; 2-D ``(replicate, shard)`` for ``HYBRID_SHARD`` and ``NO_SHARD``."""
        from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

        if isinstance(self._device_mesh, DeviceMesh):
            return self._device_mesh
        if self.sharding_strategy == "NO_SHARD":
            shape: tuple[int, ...] = (self.world_size, 1)  # replicate everywhere, shard over one process
        elif self.sharding_strategy in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
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
        if self.cpu_offload or _has_meta(module):
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
            recorder = InitRecorder(self.root_device if not self.cpu_offload else torch.device("cpu"))
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
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        if self._checkpoint_policy is not None:
            _apply_activation_checkpointing(module, self._checkpoint_policy)
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
        offload = CPUOffloadPolicy(pin_memory=pin) if self.cpu_offload else OffloadPolicy()
        meta = _has_meta(module)
        log = self._init_log_for(module) if meta else None
        if meta and log is None:
            _check_initializable(module)
        names = _tensor_names(module, log) if log is not None else {}
        kwargs = {
            "mesh": self._mesh,
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": mp_policy,
            "offload_policy": offload,
            **self._fully_shard_kwargs,
        }
        policy = self._wrap_policy or _default_policy(module)
        # Children before parents: each unit holds the parameters not already in a smaller unit.
        for submodule in reversed(list(module.modules())):
            if submodule is not module and not isinstance(submodule, _CONTAINERS) and policy(submodule):
                fully_shard(submodule, **kwargs)
        fully_shard(module, **kwargs)
        if meta:
            device = self.root_device if not self.cpu_offload else torch.device("cpu")
            if log is not None:
                _materialize_from_log(module, log, names, device)
            else:
                _materialize(module, device)
        self._sharded.add(module)
        return module

    def _init_log_for(self, module: Module) -> InitLog | None:
        """The recording of ``module``'s construction under ``init_module(empty_init=True)``, if any."""
        tensors = [*module.parameters(), *module.buffers()]
        for log in self._init_logs:
            if log.covers(tensors):
                self._init_logs.remove(log)  # replayed once; its tensors can be freed afterwards
                return log
        return None

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


# --------------------------------------------------------------------------- helpers
_SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")
#: FSDP1 arguments whose FSDP2 behaviour is already what they ask for: accepted and dropped
_FSDP1_NO_OPS = {"use_orig_params": True, "limit_all_gathers": True}
#: FSDP1 arguments with no FSDP2 equivalent, and what to do instead
_FSDP1_ONLY = {
    "backward_prefetch": "FSDP2 prefetches the next unit in backward by itself; remove the argument",
    "forward_prefetch": "FSDP2 prefetches by itself (explicit control: `FSDPModule.set_modules_to_forward_prefetch`)",
    "sync_module_states": "seed before creating the model (`fabric.seed_everything`) so all processes start equal",
    "param_init_fn": "create the model under `fabric.init_module(empty_init=True)`; its own init is kept",
    "device_id": "the strategy places the model on each process's device; remove the argument",
    "ignored_states": "pass `ignored_params` (a set of parameters), which FSDP2 accepts",
}


def _sharding_strategy_name(value: Any) -> str:
    """``"FULL_SHARD"`` etc., from a string (any case) or torch's ``ShardingStrategy`` enum."""
    name = getattr(value, "name", value)
    if isinstance(name, str) and name.upper() in _SHARDING_STRATEGIES:
        return name.upper()
    raise ValueError(
        f"FSDPStrategy(sharding_strategy={value!r}): allowed {', '.join(_SHARDING_STRATEGIES)} (a string or "
        f"`torch.distributed.fsdp.ShardingStrategy`)."
    )


def _offload_flag(value: Any) -> bool:
    """``cpu_offload``: a bool, or FSDP1's ``CPUOffload(offload_params=...)``."""
    if isinstance(value, bool):
        return value
    if hasattr(value, "offload_params"):
        return bool(value.offload_params)
    raise TypeError(
        f"FSDPStrategy(cpu_offload={value!r}): pass True/False or `CPUOffload(offload_params=...)`."
    )


def _check_device_mesh(value: Any, strategy: str) -> Any:
    """``device_mesh``: ``(replicate, shard)`` sizes or a ready ``DeviceMesh``, for hybrid sharding."""
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, int) and v >= 1 for v in value):
            raise ValueError(
                f"FSDPStrategy(device_mesh={value!r}): pass two positive ints, (replicate size, shard size)."
            )
        if strategy not in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
            raise ValueError(
                f"FSDPStrategy(device_mesh={value!r}, sharding_strategy={strategy!r}): mesh sizes only apply to "
                f"hybrid sharding. Pass sharding_strategy='HYBRID_SHARD' or drop `device_mesh`."
            )
        return value
    if type(value).__name__ == "DeviceMesh":
        return value
    raise TypeError(f"FSDPStrategy(device_mesh={value!r}): pass (replicate, shard) sizes or a DeviceMesh.")


def _mixed_precision_policy(value: Any) -> Any:
    """FSDP1's ``MixedPrecision`` dataclass (Lightning users pass it) as FSDP2's ``MixedPrecisionPolicy``."""
    if value is None:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if isinstance(value, MixedPrecisionPolicy):
        return value
    if not hasattr(value, "param_dtype"):
        raise TypeError(
            f"FSDPStrategy(mixed_precision={value!r}): pass `torch.distributed.fsdp.MixedPrecisionPolicy` or "
            f"FSDP1's `MixedPrecision`."
        )
    if getattr(value, "buffer_dtype", None) is not None:
        raise ValueError(
            f"FSDPStrategy(mixed_precision=MixedPrecision(buffer_dtype={value.buffer_dtype})): FSDP2 does not "
            f"cast buffers. Create the model in that dtype (`fabric.init_module()` under a '-true' precision) "
            f"or leave buffer_dtype unset."
        )
    if getattr(value, "keep_low_precision_grads", False):
        raise ValueError(
            "FSDPStrategy(mixed_precision=MixedPrecision(keep_low_precision_grads=True)): FSDP2 has no equivalent; "
            "gradients are reduced in `reduce_dtype` and stored in the parameters' dtype. Remove the flag."
        )
    # FSDP2 casts the inputs of each unit to param_dtype, as FSDP1 does at the root by default.
    return MixedPrecisionPolicy(param_dtype=value.param_dtype, reduce_dtype=value.reduce_dtype)


def _fully_shard_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Extra ``FSDPStrategy(**kwargs)`` for ``fully_shard``; FSDP1-only ones get a clear error."""
    passed: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _FSDP1_NO_OPS and value == _FSDP1_NO_OPS[key]:
            continue
        if key in _FSDP1_ONLY:
            raise ValueError(
                f"FSDPStrategy({key}={value!r}) is an FSDP1 option with no FSDP2 equivalent: {_FSDP1_ONLY[key]}."
            )
        if key == "ignored_modules":
            passed["ignored_params"] = {p for module in value for p in module.parameters()}
            continue
        passed[key] = value
    if passed:
        import inspect

        from torch.distributed.fsdp import fully_shard

        allowed = set(inspect.signature(fully_shard).parameters) - {
            "module",
            "mesh",
            "mp_policy",
            "offload_policy",
        }
        unknown = sorted(set(passed) - allowed)
        if unknown:
            raise TypeError(
                f"FSDPStrategy got {unknown}, which `fully_shard` does not accept. Allowed extra arguments: "
                f"{sorted(allowed - {'reshard_after_forward'})}."
            )
    return passed


def _as_predicate(policy: Any, name: str) -> Callable[[Module], bool] | None:
    if policy is None:
        return None
    classes_of = getattr(policy, "_module_classes", None)  # FSDP1's ModuleWrapPolicy
    if classes_of is not None:
        policy = set(classes_of)
    if callable(policy) and not isinstance(policy, type) and _takes_recurse(policy):
        fsdp1_policy = (
            policy  # FSDP1 signature fn(module, recurse, nonwrapped_numel): ask about the module itself
        )

        def predicate(module: Module) -> bool:
            numel = sum(p.numel() for p in module.parameters())
            return bool(fsdp1_policy(module=module, recurse=False, nonwrapped_numel=numel))

        return predicate
    if isinstance(policy, type) and issubclass(policy, Module):
        policy = {policy}
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


_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict)


def _takes_recurse(function: Callable[..., Any]) -> bool:
    import inspect

    try:
        return "recurse" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _default_policy(model: Module) -> Callable[[Module], bool]:
    """Each direct child of ``model`` that holds parameters is its own unit, unless it shares one.

    Containers (``ModuleList``, ``ModuleDict``) have no forward, so FSDP2 cannot shard them ("does not
    support containers"): their children take their place, recursively. With the usual transformer
    layout (``self.blocks = nn.ModuleList(...)``) each block becomes a unit.

    A parameter used by several modules (tied embeddings: GPT-2's ``lm_head`` and ``wte``, T5's encoder
    and decoder sharing one embedding) must be gathered by a unit that contains every module using it,
    or one user would see it resharded. So a child that holds a shared parameter while some other user
    of it lies outside that child is not a unit: its own children are considered instead, and the
    shared parameter itself stays with the unit that encloses all of its users (the root, for the
    usual tied head). Sharing is found by parameter identity, not by names.
    """
    shared = _shared_parameter_paths(model)
    units: set[int] = set()

    def splits_a_shared_parameter(path: str, child: Module) -> bool:
        own = {id(p) for p in child.parameters()}
        return any(
            key in own and any(not _within(user, path) for user in users) for key, users in shared.items()
        )

    def visit(parent: Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            if not any(True for _ in child.parameters()):
                continue
            if isinstance(child, _CONTAINERS) or splits_a_shared_parameter(path, child):
                visit(child, f"{path}.")
            else:
                units.add(id(child))

    visit(model, "")
    return lambda module: id(module) in units


def _shared_parameter_paths(model: Module) -> dict[int, set[str]]:
    """``id`` of each parameter reachable under more than one module path -> those paths.

    A parameter is shared when two modules register it (a tied ``lm_head.weight``) or when one module
    holding it is registered in two places (T5 passes its ``shared`` embedding to both stacks).
    """
    paths: dict[int, set[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            paths.setdefault(id(param), set()).add(path)
    return {key: users for key, users in paths.items() if len(users) > 1}


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(f"{ancestor}.")


def _has_meta(module: Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def _tensor_names(module: Module, log: InitLog | None = None) -> dict[int, str]:
    """``id`` of each parameter and buffer (before sharding replaces them) -> its qualified name.

    With ``log``, a parameter that wraps a logged tensor no operation touched afterwards is named by
    that tensor's ``id`` too, so that the replay hands its value over.
    """
    names = {id(p): name for name, p in module.named_parameters()}
    names.update({id(b): name for name, b in module.named_buffers()})
    if log is not None:
        for tensor in [*module.parameters(), *module.buffers()]:
            logged = log.recorded(tensor)
            if logged is not None and logged is not tensor:
                names.setdefault(id(logged), names[id(tensor)])
    return names


def _materialize_from_log(module: Module, log: InitLog, names: dict[int, str], device: torch.device) -> None:
    """Give each process its shards with the values the recorded construction gives (bit for bit)."""
    module.to_empty(device=device)
    targets = {**dict(module.named_parameters()), **dict(module.named_buffers())}

    def sink(name: str, full: Tensor) -> None:
        if name not in targets:
            raise RuntimeError(
                f"init_module(empty_init=True): the parameter or buffer {name!r} of the constructed model is gone "
                f"after parallelizing (renamed or replaced), so its initial value has nowhere to go. Keep the "
                f"names, or create the model with empty_init=False."
            )
        with torch.no_grad():
            _copy_shard(full, targets[name])

    replay_into(log, device, names, sink)


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
