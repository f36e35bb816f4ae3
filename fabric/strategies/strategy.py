"""The strategy interface: how a model and its optimizers are wrapped, how processes talk, how
checkpoints are written.

A strategy owns an accelerator (which device), a precision plugin (which dtypes) and, when several
processes take part, a cluster environment (who am I) and a launcher (how the processes come to
exist). The facade only calls the hooks below; capabilities that not every strategy has are small
mixins (:class:`BackwardSyncControl`) that the facade asks for with ``isinstance``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.overrides import TorchFunctionMode

from fabric.accelerators.accelerator import Accelerator
from fabric.precision import Precision
from fabric.utilities.apply import move_to_device
from fabric.utilities.types import PathLike, ReduceOp

if TYPE_CHECKING:
    from fabric.checkpoint.background import AsyncSave
    from fabric.checkpoint.checkpoint_io import CheckpointIO
    from fabric.checkpoint.host import LayoutName
    from fabric.checkpoint.options import LoadOptions, SaveOptions
    from fabric.checkpoint.pipeline import Checkpointer
    from fabric.launchers.launcher import Launcher


class Strategy(ABC):
    """Base class of every strategy. Subclasses override the hooks their engine changes."""

    #: Where :meth:`setup_module` puts this strategy's work around the model's forward (syncing
    #: gradients, gathering shards), which decides how the module wrapper makes a method other than
    #: ``forward`` (``mark_forward_method``, Lightning's ``training_step``) reach the model:
    #: ``"none"``: no work, the method is called directly; ``"wrapper"``: in a separate object that
    #: calls the model (``DistributedDataParallel``, DeepSpeed's engine); ``"in_place"``: as hooks on
    #: the model itself (FSDP2's ``fully_shard``: the same object, so no comparison could tell). For
    #: both of the last two, the call is routed through the model's ``forward``. A subclass whose
    #: ``setup_module`` wraps the model must say which; the wrapper obeys this and compares no objects.
    module_wrapping: Literal["none", "wrapper", "in_place"] = "none"
    #: how the connector starts this strategy's other processes: ``"popen"`` (re-run the command),
    #: ``"spawn"``/``"fork"``/``"forkserver"`` (``fabric.launch(fn)``), or ``None`` (one process only)
    start_method: str | None = None

    def __init__(self, accelerator: Accelerator | None = None, precision: Precision | None = None) -> None:
        self._accelerator = accelerator
        # A plain attribute, not a property: it is read on every step (backward, optimizer step).
        self.precision: Precision = precision if precision is not None else Precision()
        self._launcher: Launcher | None = None
        self._checkpoint_io: CheckpointIO | None = None
        self._checkpointer: Checkpointer | None = None

    # ---------------------------------------------------------------------- parts
    @property
    def accelerator(self) -> Accelerator | None:
        return self._accelerator

    @accelerator.setter
    def accelerator(self, accelerator: Accelerator) -> None:
        self._accelerator = accelerator

    @property
    def launcher(self) -> Launcher | None:
        """How the processes are started; ``None`` when this process is the only one."""
        return self._launcher

    @launcher.setter
    def launcher(self, launcher: Launcher | None) -> None:
        # Chosen by the connector, which knows the environment and the start method.
        self._launcher = launcher

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

    def replaced_parameters(self) -> Mapping[int, Tensor]:
        """``id`` of each model parameter that moving the model replaced by a new object -> its replacement.

        Empty where a move keeps the objects (CPU, CUDA); XLA's moves create new ``Parameter`` objects, and
        an optimizer made before ``setup`` still holds the old ones until the strategy re-points it.
        """
        return {}

    def setup_extra_parameters(
        self, parameters: list[torch.Tensor], optimizer: Optimizer, move: bool = True
    ) -> None:
        """Parameters ``optimizer`` updates that are not in the model (a learnable temperature, the
        weights of a loss module): trained as Lightning trains them, on this strategy's device.

        Moved in place (the optimizer keeps the same objects), keeping their dtype, unless ``move`` is
        false (``setup(..., move_to_device=False)``). A strategy that runs several processes must also
        keep them equal on every process, or refuse them.
        """
        if not move:
            return
        with torch.no_grad():
            for parameter in parameters:
                if parameter.device != self.root_device:
                    parameter.data = parameter.data.to(self.root_device)

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

    def _step_call(self, name: Literal["backward", "optimizer_step"]) -> Callable[..., Any]:
        """The callable to run for ``name`` on every step, decided once (by the wrappers, at set-up).

        A strategy that keeps the base method, which only hands over to the precision, gets the
        precision's method itself: one call less per step. One that overrides it gets its own.
        """
        if getattr(type(self), name) is getattr(Strategy, name):
            return getattr(self.precision, name)
        return getattr(self, name)

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
    #: whether this strategy's processes each hold a shard (and read only their shard of a directory)
    sharded_checkpoints: bool = False

    @property
    def checkpoint_layout(self) -> LayoutName:
        """``"file"``: one file written by global rank 0; ``"sharded"``: a directory, every process its shard;
        ``"deepspeed"``: DeepSpeed's directory, written by its engine. The pipeline picks its layout by it."""
        return "file"

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """How single-file checkpoints reach storage (``Fabric(plugins=[MyCheckpointIO()])`` replaces it)."""
        if self._checkpoint_io is None:
            # lazy: kept out of `from fabric import Fabric`
            from fabric.checkpoint.checkpoint_io import TorchCheckpointIO

            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, checkpoint_io: CheckpointIO) -> None:
        self._checkpoint_io = checkpoint_io

    @property
    def checkpointer(self) -> Checkpointer:
        """The save/load pipeline (:mod:`fabric.checkpoint.pipeline`), which asks this strategy's hooks below."""
        if self._checkpointer is None:
            # lazy: kept out of `from fabric import Fabric`
            from fabric.checkpoint.pipeline import Checkpointer

            self._checkpointer = Checkpointer(self)
        return self._checkpointer

    def save_shards(self, shards: dict[str, Any], directory: str) -> dict[str, dict[str, int]] | None:
        """Write the (sharded) tensors of a sharded checkpoint into ``directory``; every process calls this.

        Returns the size and CRC-32 of each file this process wrote, taken while writing; a strategy whose
        writer cannot take them returns ``None``, and the files are read back for the manifest.
        """
        from fabric.checkpoint.sharded import save_shards  # lazy: kept out of `from fabric import Fabric`

        return save_shards(shards, directory)

    def capture_rng_state(self) -> dict[str, Any]:
        """This process's random state, stored in every checkpoint for an exact resume."""
        from fabric.utilities.rng import capture_rng_state  # lazy: kept out of `from fabric import Fabric`

        return capture_rng_state()

    def restore_rng_state(self, rng_state: dict[str, Any]) -> None:
        from fabric.utilities.rng import restore_rng_state  # lazy: kept out of `from fabric import Fabric`

        restore_rng_state(rng_state)

    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """The full state of ``module`` for a single-file checkpoint (read on global rank 0)."""
        return module.state_dict()

    def get_optimizer_state(
        self, optimizer: Optimizer, module: Module | None = None, every_rank: bool = False
    ) -> dict[str, Any]:
        """The full, index-keyed state of ``optimizer`` (``module`` is the model it updates).

        A checkpoint file needs it on global rank 0 only (``every_rank=False``: a sharding strategy may
        leave the other ranks' copy empty); ``optimizer.state_dict()`` of the set-up optimizer gives it
        on every rank (``every_rank=True``), as a plain optimizer does, so that every rank can load it.
        """
        return optimizer.state_dict()

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load a full state dict into ``module``."""
        module.load_state_dict(state_dict, strict=strict)

    def load_optimizer_state_dict(
        self, optimizer: Optimizer, state_dict: dict[str, Any], module: Module | None = None
    ) -> None:
        """Load a full optimizer state (index-keyed as ``optimizer.state_dict()``, or keyed by parameter name)."""
        # imported here: the checkpoint package is not needed to start a run
        from fabric.checkpoint.states import is_name_keyed, set_optimizer_state

        if is_name_keyed(state_dict):
            if module is None:
                raise KeyError(
                    f"This optimizer state is keyed by parameter names (from a sharded run), so loading it needs "
                    f"the model {type(optimizer).__name__} updates: set both up with `fabric.setup(model, "
                    f"optimizer)`, or put the model in the same `state`."
                )
            set_optimizer_state(module, optimizer, state_dict, full=False)
        else:
            optimizer.load_state_dict(state_dict)

    def prepare_save(self, state: Mapping[str, Any]) -> None:
        """Called on every process before ``state`` is saved: bring what the save reads into agreement
        (FSDP broadcasts rank 0's buffers). Nothing to do by default."""

    def save_checkpoint(
        self,
        path: PathLike,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
        options: SaveOptions | None = None,
    ) -> None:
        """Write ``state`` in this strategy's layout (see :mod:`fabric.checkpoint.pipeline`).

        ``options`` carries what ``Fabric.save`` was asked for; ``filter`` (Lightning's argument) replaces
        its filter when given.
        """
        self.checkpointer.save(path, state, _save_options(options, filter, async_save=False))

    def save_checkpoint_async(
        self,
        path: PathLike,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
        options: SaveOptions | None = None,
    ) -> AsyncSave:
        """Snapshot ``state`` to CPU memory, write it in a background thread (:mod:`fabric.checkpoint.background`).

        Only the pipeline's own layouts are written in the background (file, sharded, DeepSpeed's): a
        strategy that writes its checkpoints another way (its own ``save_checkpoint`` or
        ``save_shards``, e.g. torch-xla's planner) refuses, rather than silently saving synchronously.
        """
        own_writer = [
            name
            for name in ("save_checkpoint", "save_shards")
            if getattr(type(self), name) is not getattr(Strategy, name)
        ]
        if own_writer:
            raise NotImplementedError(
                f"Fabric.save(async_save=True) is not supported with {type(self).__name__}: it writes checkpoints "
                f"its own way ({', '.join(own_writer)}). Save synchronously (async_save=False, the default)."
            )
        pending = self.checkpointer.save(path, state, _save_options(options, filter, async_save=True))
        assert pending is not None
        return pending

    def load_checkpoint(
        self,
        path: PathLike,
        state: dict[str, Any] | Module | Optimizer | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        options: LoadOptions | None = None,
    ) -> Any:
        """Restore ``state`` in place from any layout; return what the checkpoint holds beyond it.

        A module or optimizer as ``state`` is loaded from a plain state-dict file, as in Lightning.
        ``options`` carries what ``Fabric.load`` was asked for; ``strict`` and ``weights_only``
        (Lightning's arguments), when given, replace its own.
        """
        from fabric.checkpoint.options import DEFAULT_LOAD  # heavy: fabric.checkpoint, not in start-up

        options = options or DEFAULT_LOAD
        if strict is not None:
            options = replace(options, strict=strict)
        if weights_only is not None:
            options = replace(options, weights_only=weights_only)
        return self.checkpointer.load(path, state, options)

    def load_raw(
        self,
        path: PathLike,
        obj: Module | Optimizer,
        strict: bool = True,
        weights_only: bool = True,
        owner: Module | None = None,
    ) -> None:
        """Load a plain ``torch.save`` file of a state dict into ``obj``."""
        self.checkpointer.load_raw(path, obj, strict=strict, weights_only=weights_only, owner=owner)

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        if self._checkpointer is not None:
            # A checkpoint still being written in the background may need the process group.
            self._checkpointer.finish_here()
        self.precision.teardown()
        if self._accelerator is not None:
            self._accelerator.teardown()


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


def _save_options(
    options: SaveOptions | None, filter: dict[str, Callable[[str, Any], bool]] | None, async_save: bool
) -> SaveOptions:
    from fabric.checkpoint.options import DEFAULT_SAVE  # heavy: fabric.checkpoint, not in start-up

    options = options or DEFAULT_SAVE
    if filter is not None:
        options = replace(options, filter=filter)
    return replace(options, async_save=async_save)
