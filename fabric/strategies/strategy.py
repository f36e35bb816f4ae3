"""The strategy interface: how a model and its optimizers are wrapped, how processes talk, how
checkpoints are written.

A strategy owns an accelerator (which device), a precision plugin (which dtypes) and, when several
processes take part, a cluster environment (who am I) and a launcher (how the processes come to
exist). The facade only calls the hooks below; capabilities that not every strategy has are small
mixins (:class:`BackwardSyncControl`) that the facade asks for with ``isinstance``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode

from fabric.accelerators import Accelerator
from fabric.checkpoint.io import atomic_save, safe_load
from fabric.checkpoint.sharded import (
    META_FILE,
    consolidate,
    is_name_keyed,
    is_sharded_checkpoint,
    load_sharded,
    module_state,
    optimizer_state,
    resolve_checkpoint_path,
    saved_keys,
    set_module_state,
    set_optimizer_state,
)
from fabric.precision import Precision
from fabric.utilities.apply import move_to_device
from fabric.utilities.rank_zero import rank_zero_warn
from fabric.utilities.rng import capture_rng_state, restore_rng_state
from fabric.utilities.types import PathLike, ReduceOp, Stateful

if TYPE_CHECKING:
    from fabric.launchers.launcher import Launcher

#: key under which the precision plugin's state (e.g. the gradient scaler) is stored in checkpoints
PRECISION_STATE_KEY = "__fabric_precision__"
#: key under which each process's own state (random generators, dataloader positions) is stored
PER_RANK_STATE_KEY = "__fabric_per_rank__"


class Strategy(ABC):
    """Base class of every strategy. Subclasses override the hooks their engine changes."""

    def __init__(self, accelerator: Accelerator | None = None, precision: Precision | None = None) -> None:
        self._accelerator = accelerator
        self._precision = precision if precision is not None else Precision()
        self._launcher: Launcher | None = None

    # ---------------------------------------------------------------------- parts
    @property
    def accelerator(self) -> Accelerator | None:
        return self._accelerator

    @accelerator.setter
    def accelerator(self, accelerator: Accelerator) -> None:
        self._accelerator = accelerator

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        self._precision = precision

    @property
    def launcher(self) -> Launcher | None:
        """How the processes are started; ``None`` when this process is the only one."""
        return self._launcher

    # ------------------------------------------------------------------- topology
    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device this process computes on."""

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any] | None:
        """``num_replicas``/``rank`` for a ``DistributedSampler``; ``None`` when data needs no splitting."""
        return None

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Prepare this process: device, process group. Runs once, after the launcher started it."""
        assert self._accelerator is not None
        self._accelerator.setup_device(self.root_device)

    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Optimizer]]:
        """Wrap a module together with its optimizers (sharding strategies must do both at once)."""
        return self.setup_module(module), [self.setup_optimizer(o) for o in optimizers]

    def setup_module(self, module: Module) -> Module:
        """Wrap ``module`` for this strategy (e.g. in ``DistributedDataParallel``)."""
        return module

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def module_to_device(self, module: Module) -> None:
        module.to(self.root_device)

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager:
        """Context for creating a model: on the right device, in the right dtype."""
        stack = ExitStack()
        if empty_init:
            # Skips the random init of the default initializers; weights come from a checkpoint.
            stack.enter_context(_EmptyInit())
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.module_init_context())
        return stack

    def tensor_init_context(self) -> AbstractContextManager:
        stack = ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.tensor_init_context())
        return stack

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_to_device(batch, device or self.root_device)

    # --------------------------------------------------------------------- steps
    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        self.precision.backward(tensor, module, *args, **kwargs)

    def optimizer_step(self, optimizer: Optimizer, **kwargs: Any) -> Any:
        return self.precision.optimizer_step(optimizer, **kwargs)

    def clip_gradients_norm(
        self,
        module: Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor:
        self.precision.unscale_gradients(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(
            parameters, max_norm=max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )
        # Sharded gradients (DTensors) give a sharded norm: report the global one.
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float) -> None:
        self.precision.unscale_gradients(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(parameters, clip_value=clip_val)

    # --------------------------------------------------------------- collectives
    def all_reduce(self, tensor: Tensor, reduce_op: ReduceOp = "mean") -> Tensor:
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Gather ``tensor`` from every process into a new leading dimension of size world size."""
        return tensor.unsqueeze(0)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this point."""

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision

    def gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        return [obj]

    # ---------------------------------------------------------------- checkpoints
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        return module.state_dict()

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        module.load_state_dict(state_dict, strict=strict)

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, value: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """Load a full optimizer state (index-keyed as ``optimizer.state_dict()``, or keyed by parameter name)."""
        if is_name_keyed(value):
            set_optimizer_state(
                _owner_module(optimizer, state, "the checkpoint"), optimizer, value, full=False
            )
        else:
            optimizer.load_state_dict(value)

    def save_checkpoint(
        self,
        path: PathLike,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        """Write ``state`` to one file, atomically, from global rank 0.

        Each process's random state and dataloader positions are gathered into the file as well.
        """
        checkpoint = self._convert_state(state, filter or {})
        per_rank = self.gather_object(_per_rank_state(state))
        if self.is_global_zero:
            checkpoint[PER_RANK_STATE_KEY] = per_rank
            atomic_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: PathLike,
        state: dict[str, Any] | Module | Optimizer | None = None,
        strict: bool = True,
        weights_only: bool = True,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Restore ``state`` in place from ``path``; return what the checkpoint holds beyond it.

        ``path`` is a single file (``save`` of a non-sharding strategy, or ``state_dict_type="full"``)
        or a sharded directory; either loads into any strategy.
        """
        if isinstance(state, (Module, Optimizer)):
            raise TypeError(
                "Fabric.load(path, state): `state` must be a dict like {'model': model, ...}. To load a plain "
                "state dict into one module or optimizer, use `Fabric.load_raw(path, obj)`."
            )
        path = os.fspath(path)
        if not os.path.isfile(path):
            path = resolve_checkpoint_path(path)  # recovers a directory a crashed save left aside
        loaded: set[str] = set()
        if is_sharded_checkpoint(path):
            checkpoint, loaded = self._load_sharded_checkpoint(path, state, strict, weights_only)
        else:
            checkpoint = safe_load(path, map_location="cpu", weights_only=weights_only)
            if not isinstance(checkpoint, dict):
                raise TypeError(
                    f"The checkpoint '{path}' holds a {type(checkpoint).__name__}, not a dict of states. To "
                    f"read a plain `torch.save` file of one module or optimizer, use `Fabric.load_raw`."
                )
        precision_state = checkpoint.pop(PRECISION_STATE_KEY, None)
        if precision_state is not None:
            self.precision.load_state_dict(precision_state)
        per_rank = checkpoint.pop(PER_RANK_STATE_KEY, None)
        if state is None:
            return checkpoint
        missing = [key for key in state if key not in checkpoint and key not in loaded]
        if strict and missing:
            raise KeyError(
                f"The checkpoint '{path}' has no entry for {missing} requested in `state` (it holds "
                f"{sorted(set(checkpoint) | loaded)}). Remove those keys from `state`, or pass strict=False to "
                f"skip them."
            )
        for key, obj in state.items():
            if key not in checkpoint or key in loaded:
                continue
            value = checkpoint.pop(key)
            self._restore(obj, value, strict, key, state)
        if per_rank is not None:
            self._restore_per_rank(path, per_rank, state, restore_rng)
        return checkpoint

    #: whether this strategy's processes each hold a shard (and read only their shard of a directory)
    sharded_checkpoints: bool = False

    def _load_sharded_checkpoint(
        self, directory: str, state: dict[str, Any] | None, strict: bool, weights_only: bool
    ) -> tuple[dict[str, Any], set[str]]:
        """Load the modules and optimizers of ``state`` from a sharded directory; return the rest."""
        meta_path = os.path.join(directory, META_FILE)
        meta = safe_load(meta_path, weights_only=weights_only) if os.path.exists(meta_path) else {}
        if state is None:
            return _read_whole_directory(directory, meta), set()
        stored = saved_keys(directory)
        targets: dict[str, Any] = {}
        owners: dict[str, Module] = {}
        for key, obj in state.items():
            if key not in stored:
                continue
            if isinstance(obj, Module):
                targets[key] = module_state(obj)
            elif isinstance(obj, Optimizer):
                owners[key] = _owner_module(obj, state, directory)
                targets[key] = optimizer_state(owners[key], obj)
        if targets:
            load_sharded(targets, directory, distributed=self.sharded_checkpoints, strict=strict)
        for key, value in targets.items():
            obj = state[key]
            if isinstance(obj, Module):
                set_module_state(obj, value, strict=strict, full=False)
            else:
                set_optimizer_state(owners[key], obj, value, full=False)
        return meta, set(targets)

    def _restore_per_rank(
        self, path: PathLike, per_rank: list[dict[str, Any]], state: dict[str, Any], restore_rng: bool
    ) -> None:
        """Give this process its own random state and dataloader positions back."""
        if len(per_rank) != self.world_size:
            rank_zero_warn(
                f"The checkpoint '{path}' was written by {len(per_rank)} process(es) and is loaded by "
                f"{self.world_size}: the random state is not restored and dataloaders continue from rank 0's "
                f"position, so the resumed run will not repeat the original exactly."
            )
            return
        mine = per_rank[self.global_rank]
        for key, loader_state in mine["dataloaders"].items():
            if key in state and isinstance(state[key], Stateful):
                state[key].load_state_dict(loader_state)
        if restore_rng:
            restore_rng_state(mine["rng"])

    def load_raw(self, path: PathLike, obj: Module | Optimizer, strict: bool = True) -> None:
        """Load a plain ``torch.save`` file of a state dict (or a module) into ``obj``."""
        loaded = safe_load(path, map_location="cpu", weights_only=True)
        if isinstance(loaded, Module):  # pragma: no cover - weights_only refuses pickled modules
            loaded = loaded.state_dict()
        if isinstance(obj, Module):
            self.load_module_state_dict(obj, loaded, strict=strict)
        elif isinstance(obj, Optimizer):
            obj.load_state_dict(loaded)
        else:
            raise TypeError(
                f"Fabric.load_raw(path, obj): `obj` must be a module or an optimizer, got "
                f"{type(obj).__name__}. For other objects use `Fabric.load`."
            )

    def _convert_state(
        self, state: dict[str, Any], filter: dict[str, Callable[[str, Any], bool]]
    ) -> dict[str, Any]:
        unknown = set(filter) - set(state)
        if unknown:
            raise KeyError(
                f"Fabric.save(filter=...) names {sorted(unknown)}, which are not keys of `state` "
                f"({sorted(state)}). Filter keys must match the state's keys."
            )
        converted: dict[str, Any] = {}
        for key, obj in state.items():
            if isinstance(obj, Module):
                value = self.get_module_state_dict(obj)
            elif isinstance(obj, Optimizer):
                value = self.get_optimizer_state(obj)
            elif isinstance(obj, Stateful):
                value = obj.state_dict()
            else:
                value = obj
            if key in filter:
                if not isinstance(value, dict):
                    raise TypeError(
                        f"Fabric.save(filter={{{key!r}: ...}}): `{key}` is not a dict or stateful."
                    )
                value = {k: v for k, v in value.items() if filter[key](k, v)}
            converted[key] = value
        precision_state = self.precision.state_dict()
        if precision_state:
            converted[PRECISION_STATE_KEY] = precision_state
        return converted

    def _restore(self, obj: Any, value: Any, strict: bool, key: str, state: dict[str, Any]) -> None:
        if isinstance(obj, Module):
            self.load_module_state_dict(obj, value, strict=strict)
        elif isinstance(obj, Optimizer):
            self.load_optimizer_state_dict(obj, value, state)
        elif isinstance(obj, Stateful):
            obj.load_state_dict(value)
        else:
            state[key] = value

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        self.precision.teardown()
        if self._accelerator is not None:
            self._accelerator.teardown()


def _owner_module(optimizer: Optimizer, state: dict[str, Any], where: str) -> Module:
    """The module in ``state`` whose parameters ``optimizer`` updates."""
    first = next((p for group in optimizer.param_groups for p in group["params"]), None)
    for obj in state.values():
        if isinstance(obj, Module) and any(p is first for p in obj.parameters()):
            return obj
    raise KeyError(
        f"Loading an optimizer from {where} needs its model in the same `state` (e.g. "
        f"{{'model': model, 'optimizer': optimizer}}): its state is stored by parameter name."
    )


def _read_whole_directory(directory: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything in a sharded directory as one dict of full tensors (for ``load(path)`` without state)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "full.pt")
        consolidate(directory, target)
        return safe_load(target)


def _per_rank_state(state: dict[str, Any]) -> dict[str, Any]:
    from fabric.wrappers import _FabricDataLoader

    return {
        "rng": capture_rng_state(),
        "dataloaders": {k: v.state_dict() for k, v in state.items() if isinstance(v, _FabricDataLoader)},
    }


class BackwardSyncControl(ABC):
    """A strategy that can skip the gradient synchronization of a backward pass."""

    @abstractmethod
    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager:
        """Context in which backward passes of ``module`` accumulate gradients locally only."""


class _EmptyInit(TorchFunctionMode):
    """Make the in-place initializers of ``torch.nn.init`` no-ops while a model is created.

    Used by ``init_module(empty_init=True)`` when the weights will come from a checkpoint anyway: it
    saves the time of a random init that would be overwritten. A torch-function mode is torch's own
    hook for this; nothing is patched.
    """

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)
