"""The ``Fabric`` facade: the one object a training script talks to.

It owns no device, dtype or process logic. The connector turns its arguments into parts once; each
method then delegates to the strategy (which holds the accelerator and precision) or to a wrapper.
"""

from __future__ import annotations

import inspect
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, overload

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fabric import lifecycle
from fabric.accelerators import Accelerator
from fabric.connector import Connector, backward_argument_error, resolve_callbacks
from fabric.loggers.logger import Logger
from fabric.strategies import BackwardSyncControl, Strategy
from fabric.utilities.apply import move_to_device
from fabric.utilities.compiled import compile_again, unwrap_compiled
from fabric.utilities.rank_zero import rank_zero_warn
from fabric.utilities.seed import seed_everything as _seed_everything
from fabric.utilities.types import PathLike, ReduceOp
from fabric.wrappers import (
    _FabricDataLoader,
    _FabricModule,
    _FabricOptimizer,
    _unwrap,
    is_wrapped,
    optimizer_owners,
    wrap_optimizer,
)

if TYPE_CHECKING:
    from fabric.checkpoint.background import AsyncSave

# what Fabric calls on a logger: any object with these methods is accepted (e.g. Lightning's loggers)
_LOGGER_METHODS = ("log_metrics", "log_hyperparams", "save", "finalize")


class Fabric:
    """Device placement, mixed precision, distributed training and checkpoints for your own loop.

    Args:
        accelerator: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"gpu"`` or ``"auto"`` (or an Accelerator).
        strategy: ``"auto"``, ``"single_device"``, ``"ddp"``, ``"ddp_spawn"``, ... (or a Strategy).
        devices: how many devices, which ones (``[0, 2]``, ``"0,1"``), ``-1`` for all, or ``"auto"``.
        num_nodes: the number of machines.
        precision: ``"32-true"`` (default), ``"64-true"``, ``"16-mixed"``, ``"bf16-mixed"``,
            ``"16-true"``, ``"bf16-true"`` or the aliases ``32``, ``64``, ``16``, ``"bf16"``.
        plugins: a Precision or ClusterEnvironment instance, or a list of them.
        callbacks: objects whose methods :meth:`call` invokes by name.
        loggers: a Logger or a list of them, used by :meth:`log` and :meth:`log_dict`.

    Example::

        fabric = Fabric(precision="bf16-mixed")
        model, optimizer = fabric.setup(model, optimizer)
        loader = fabric.setup_dataloaders(loader)
        for x, y in loader:
            loss = loss_fn(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    """

    def __init__(
        self,
        accelerator: str | Accelerator = "auto",
        strategy: str | Strategy = "auto",
        devices: list[int] | str | int = "auto",
        num_nodes: int = 1,
        precision: str | int | None = None,
        plugins: Any = None,
        callbacks: Any = None,
        loggers: Logger | list[Logger] | None = None,
    ) -> None:
        connector = Connector(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            plugins=plugins,
        )
        self._strategy: Strategy = connector.strategy
        # decided once, the strategy and its precision being known: what `backward` calls each step
        self._backward = self._strategy._step_call("backward")
        self._accelerator: Accelerator = connector.accelerator
        self._callbacks = resolve_callbacks(callbacks)
        self._loggers: list[Logger] = self._as_list(loggers, "loggers")
        for logger in self._loggers:
            missing = [m for m in _LOGGER_METHODS if not callable(getattr(logger, m, None))]
            if not isinstance(logger, Logger) and missing:
                raise TypeError(
                    f"Fabric(loggers=[{logger!r}]): a logger must be a fabric.loggers.Logger or implement the "
                    f"logger interface ({', '.join(_LOGGER_METHODS)}); {type(logger).__name__} lacks "
                    f"{', '.join(missing)}."
                )
        self._launched = False
        self._environment_ready = False
        self._stop_agreed = False
        self._models_setup = 0
        # The set-up models, for `setup_optimizers` to find the model an optimizer updates; weak, so
        # that Fabric keeps nothing alive that the user dropped.
        self._setup_modules: weakref.WeakSet[Module] = weakref.WeakSet()

    def __getstate__(self) -> dict[str, Any]:
        # Spawned processes receive the Fabric pickled, before anything is set up in them; the weak
        # bookkeeping of set-up objects cannot be pickled and starts empty there.
        state = self.__dict__.copy()
        del state["_setup_modules"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup_modules = weakref.WeakSet()

    @staticmethod
    def _as_list(value: Any, name: str) -> list[Any]:
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]

    # ---------------------------------------------------------------- properties
    @property
    def accelerator(self) -> Accelerator:
        return self._accelerator

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def device(self) -> torch.device:
        """The device this process computes on."""
        return self._strategy.root_device

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    @property
    def loggers(self) -> list[Logger]:
        return self._loggers

    @property
    def logger(self) -> Logger:
        """The first logger; raises if none was given."""
        if not self._loggers:
            raise RuntimeError("Fabric.logger: no logger was given. Pass `Fabric(loggers=...)`.")
        return self._loggers[0]

    @property
    def should_stop(self) -> bool:
        """Whether the run should save and stop now: a stop signal reached at least one process.

        ``SIGUSR1`` and ``SIGTERM`` (what SLURM with ``--signal``, Kubernetes and torchrun send before
        they kill a job) are recorded from the first time this property is read: read it once before
        the loop to watch from the start. Each read agrees across processes (one all-reduce of a flag),
        so every process must read it at the same points, and all stop at the same step. Once true,
        it stays true without further communication.

        Example::

            for step, batch in enumerate(loader):
                ...
                if fabric.should_stop:
                    fabric.save("ckpt.pt", state)
                    break
        """
        if self._stop_agreed:
            return True
        lifecycle.watch_signals()
        self._stop_agreed = self._strategy.reduce_boolean_decision(lifecycle.stop_requested(), all=False)
        return self._stop_agreed

    # -------------------------------------------------------------------- launch
    def launch(self, function: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes of this run and set up each of them.

        Without ``function`` (scripts): the launcher re-runs this script for the other processes and
        this call returns once this process is ready. With ``function`` (needed for
        ``"ddp_spawn"``/``"ddp_notebook"``): ``function(fabric, *args, **kwargs)`` runs in every
        process and rank 0's return value is returned.
        """
        if self._launched:
            raise RuntimeError("Fabric.launch() was already called; call it once per run.")
        if function is not None and not callable(function):
            raise TypeError(f"Fabric.launch(function={function!r}): the function must be callable.")
        launcher = self._strategy.launcher
        if function is None and launcher is not None and getattr(launcher, "requires_function", False):
            raise TypeError(
                f"The strategy {type(self._strategy).__name__} starts new processes that cannot re-run "
                f"your script; pass the code to run in each: `fabric.launch(train_fn)`, where "
                f"`train_fn(fabric)` holds the training."
            )
        self._launched = True
        target = self._run_with_setup
        if launcher is not None:
            return launcher.launch(target, function, *args, **kwargs)
        return target(function, *args, **kwargs)

    def _run_with_setup(self, function: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> Any:
        self._ensure_environment()
        if function is None:
            return None
        return function(self, *args, **kwargs)

    def _ensure_environment(self) -> None:
        if not self._environment_ready:
            self._strategy.setup_environment()
            self._environment_ready = True
            # Process group, environment: released at exit, in the order fabric.lifecycle documents.
            # Held weakly: a Fabric the user dropped is freed (the strategy leaves its group anyway).
            lifecycle.on_exit(self._teardown, order=lifecycle.LEAVE_PROCESS_GROUP, weak=True)

    def _check_launched(self) -> None:
        launcher = self._strategy.launcher
        if launcher is not None and not self._launched:
            raise RuntimeError(
                f"The strategy {type(self._strategy).__name__} runs several processes: call "
                f"`fabric.launch()` before setting up models, optimizers or dataloaders."
            )
        self._ensure_environment()

    # --------------------------------------------------------------------- setup
    def setup(
        self,
        module: Module,
        *optimizers: Optimizer,
        move_to_device: bool = True,
        _reapply_compile: bool = True,
    ) -> Any:
        """Set up a model and its optimizers; returns them wrapped, in the same order.

        A ``torch.compile``d model is compiled again after the strategy wraps it (``_reapply_compile=True``,
        Lightning's default and semantics); its checkpoints hold the plain module's keys. With
        ``_reapply_compile=False`` the strategy wraps the compiled module as it is (as in Lightning);
        ``fabric.save`` still writes plain keys.

        Example::

            model, optimizer = fabric.setup(model, optimizer)
        """
        module, dynamo_ctx = unwrap_compiled(module) if _reapply_compile else (module, None)
        self._check_launched()
        self._validate_module(module, "setup")
        for optimizer in optimizers:
            self._validate_optimizer(optimizer, "setup")
        module = self._strategy.precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        self._setup_extra_parameters(module, optimizers, move=move_to_device)
        forward_module, strategy_optimizers = self._strategy.setup_module_and_optimizers(
            module, list(optimizers)
        )
        if dynamo_ctx is not None:
            forward_module = compile_again(forward_module, dynamo_ctx)
        wrapped = _FabricModule(
            forward_module, self._strategy, original_module=module, compiled=dynamo_ctx is not None
        )
        wrapped_optimizers = [
            wrap_optimizer(o, self._strategy, self._callbacks, module) for o in strategy_optimizers
        ]
        self._link_module(module, wrapped_optimizers)
        self._models_setup += 1
        self._setup_modules.add(module)
        self._call_callbacks("on_after_setup", fabric=self, module=wrapped)
        if not wrapped_optimizers:
            return wrapped
        return (wrapped, *wrapped_optimizers)

    def setup_module(
        self, module: Module, move_to_device: bool = True, _reapply_compile: bool = True
    ) -> _FabricModule:
        """Set up a model without optimizers (e.g. for sharding strategies, before creating them).

        ``_reapply_compile``: as for :meth:`setup`.
        """
        module, dynamo_ctx = unwrap_compiled(module) if _reapply_compile else (module, None)
        self._check_launched()
        self._validate_module(module, "setup_module")
        module = self._strategy.precision.convert_module(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        forward_module = self._strategy.setup_module(module)
        if dynamo_ctx is not None:
            forward_module = compile_again(forward_module, dynamo_ctx)
        self._models_setup += 1
        self._setup_modules.add(module)
        self._link_module(module, None)
        return _FabricModule(
            forward_module, self._strategy, original_module=module, compiled=dynamo_ctx is not None
        )

    def _link_module(self, module: Module, optimizers: list[_FabricOptimizer] | None) -> None:
        # A module written for Lightning (it has a `_fabric` attribute) finds the fabric through it, for
        # `self.log`, `self.logger` and its optimizers. Detected by that attribute: Lightning is not imported.
        if hasattr(module, "_fabric"):
            setattr(module, "_fabric", self)  # noqa: B010
            if optimizers is not None:
                setattr(module, "_fabric_optimizers", optimizers)  # noqa: B010

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        """Set up optimizers of a model already set up with :meth:`setup_module`."""
        self._check_launched()
        if not optimizers:
            raise ValueError("Fabric.setup_optimizers() needs at least one optimizer.")
        for optimizer in optimizers:
            self._validate_optimizer(optimizer, "setup_optimizers")
        strategy_optimizers = [self._strategy.setup_optimizer(o) for o in optimizers]
        # Each wrapper is given its model now, once: saving and loading its state ask the wrapper.
        wrapped = [
            wrap_optimizer(o, self._strategy, self._callbacks, self._model_updated_by(o))
            for o in strategy_optimizers
        ]
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def _model_updated_by(self, optimizer: Optimizer) -> Module | None:
        first = next((p for group in optimizer.param_groups for p in group["params"]), None)
        return next((m for m in self._setup_modules if any(p is first for p in m.parameters())), None)

    def setup_dataloaders(
        self, *dataloaders: DataLoader, use_distributed_sampler: bool = True, move_to_device: bool = True
    ) -> Any:
        """Set up dataloaders: each process gets its share of the data, batches arrive on the device.

        Example::

            train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)
        """
        self._check_launched()
        if not dataloaders:
            raise ValueError(
                "`setup_dataloaders` requires at least one dataloader: Fabric.setup_dataloaders() got none."
            )
        wrapped = [self._setup_dataloader(d, use_distributed_sampler, move_to_device) for d in dataloaders]
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def _setup_dataloader(
        self, dataloader: DataLoader, use_distributed_sampler: bool, move_to_device: bool
    ) -> _FabricDataLoader:
        if isinstance(dataloader, _FabricDataLoader):
            raise ValueError(
                "A dataloader should be passed only once to the `setup_dataloaders` method: Fabric.setup_dataloaders() "
                "got one that was already set up; set it up once."
            )
        if not isinstance(dataloader, DataLoader):
            raise TypeError(
                f"Only PyTorch DataLoader are currently supported: Fabric.setup_dataloaders() expected "
                f"torch.utils.data.DataLoader, got {type(dataloader).__name__}."
            )
        from fabric.utilities.data import prepare_dataloader  # lazy: kept out of `from fabric import Fabric`

        dataloader = prepare_dataloader(
            dataloader,
            sampler_kwargs=self._strategy.distributed_sampler_kwargs if use_distributed_sampler else None,
            global_rank=self.global_rank,
        )
        device = self.device if move_to_device and self.device.type != "cpu" else None
        return _FabricDataLoader(dataloader, device=device, strategy=self._strategy)

    def _validate_module(self, module: Any, method: str) -> None:
        if isinstance(module, _FabricModule):
            raise ValueError(
                f"A model should be passed only once to the `{method}` method: this one was already set up; set it up once."
            )
        if not isinstance(module, Module):
            raise TypeError(f"Fabric.{method}(): expected a torch.nn.Module, got {type(module).__name__}.")

    def _validate_optimizer(self, optimizer: Any, method: str) -> None:
        if isinstance(optimizer, _FabricOptimizer):
            raise ValueError(
                f"An optimizer should be passed only once to the `{method}` method: this one was already set up; "
                f"set it up once."
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"Fabric.{method}(): expected a torch.optim.Optimizer, got {type(optimizer).__name__}."
            )

    def _setup_extra_parameters(self, module: Module, optimizers: Iterable[Optimizer], move: bool) -> None:
        # Parameters an optimizer updates beside the model (a learnable temperature, a loss module's
        # weights): accepted as in Lightning; the strategy places them (or says why it cannot). An
        # optimizer that updates none of the model's parameters is a mistake: the model would not train.
        params = {id(p) for p in module.parameters()} | set(self._strategy.replaced_parameters())
        for optimizer in optimizers:
            mine = [p for g in optimizer.param_groups for p in g["params"]]
            extra = [p for p in mine if id(p) not in params]
            if params and extra and len(extra) == len(mine):
                raise ValueError(
                    f"Fabric.setup(): none of the {len(mine)} parameter(s) of {type(optimizer).__name__} belong to "
                    f"the model being set up, so it would never train. Create the optimizer from "
                    f"`model.parameters()` of this model (extra parameters beside them are fine)."
                )
            if extra:
                self._strategy.setup_extra_parameters(extra, optimizer, move=move)

    # ------------------------------------------------------------------ training
    def backward(self, tensor: Tensor, *args: Any, model: _FabricModule | None = None, **kwargs: Any) -> None:
        """Replace ``loss.backward()``: applies gradient scaling and the strategy's backward.

        Example::

            fabric.backward(loss)
        """
        module: Module | None = model
        if model is not None and isinstance(model, _FabricModule):
            module = model._forward_module
        try:
            self._backward(tensor, module, *args, **kwargs)
        except AttributeError:  # costs nothing when no error is raised: no check on every step
            error = backward_argument_error(tensor)
            if error is None:
                raise
            raise error from None

    def clip_gradients(
        self,
        module: Module,
        optimizer: Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor | None:
        """Clip gradients by value (``clip_val``) or by total norm (``max_norm``); returns the norm.

        Gradients are unscaled first when the precision scales them.
        """
        if (clip_val is None) == (max_norm is None):
            raise ValueError(
                "Fabric.clip_gradients(): pass exactly one of `clip_val` (clip by value) or `max_norm` "
                f"(clip by norm); got clip_val={clip_val!r}, max_norm={max_norm!r}."
            )
        raw_module, raw_optimizer = _unwrap(module), _unwrap(optimizer)
        if self._strategy.precision.skips_nonfinite_steps:
            # The scaler skips a step whose gradients overflowed (and lowers the scale): clipping must
            # let that happen rather than raise on the inf/nan it will skip.
            error_if_nonfinite = False
        if max_norm is not None:
            return self._strategy.clip_gradients_norm(
                raw_module,
                raw_optimizer,
                max_norm=max_norm,
                norm_type=norm_type,
                error_if_nonfinite=error_if_nonfinite,
            )
        assert clip_val is not None
        self._strategy.clip_gradients_value(raw_module, raw_optimizer, clip_val=clip_val)
        return None

    def autocast(self) -> AbstractContextManager:
        """The precision's forward context, for code that runs a model outside its forward."""
        return self._strategy.precision.forward_context()

    @contextmanager
    def no_backward_sync(self, module: _FabricModule, enabled: bool = True) -> Generator[None, None, None]:
        """Skip gradient synchronization in backward passes inside this context (gradient accumulation).

        Both the forward and the backward of the micro-batch must run inside the context. On a single
        device this does nothing.

        Example::

            with fabric.no_backward_sync(model, enabled=not is_last_micro_batch):
                loss = model(x).sum()
                fabric.backward(loss)
        """
        if not isinstance(module, _FabricModule):
            raise TypeError(
                "You need to set up the model first: Fabric.no_backward_sync(module) takes the model returned by "
                f"`fabric.setup(...)`, got {type(module).__name__}."
            )
        if not enabled or not isinstance(self._strategy, BackwardSyncControl):
            yield
            return
        with self._strategy.no_backward_sync(module._forward_module, enabled=True):
            yield

    @overload
    def to_device(self, obj: Module) -> Module: ...

    @overload
    def to_device(self, obj: Tensor) -> Tensor: ...

    @overload
    def to_device(self, obj: Any) -> Any: ...

    def to_device(self, obj: Any) -> Any:
        """Move a module, tensor or nested collection of tensors to this process's device."""
        if isinstance(obj, Module):
            self._strategy.module_to_device(obj)
            return obj
        return move_to_device(obj, self.device)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    def init_tensor(self) -> AbstractContextManager:
        """Create tensors directly on the device and in the precision's dtype."""
        return self._strategy.tensor_init_context()

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager:
        """Create a model directly on the device and in the precision's dtype.

        With ``empty_init=True`` the random initialization is skipped (the weights must then come from
        a checkpoint); sharding strategies create the model on the meta device instead.
        """
        self._check_launched()
        return self._strategy.module_init_context(empty_init=empty_init)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool | None = None, verbose: bool = True) -> int:
        """Seed every random-number generator; see :func:`fabric.seed_everything`.

        A static method as in Lightning (``Fabric.seed_everything(42)`` works on the class). Unlike the
        function, ``workers`` defaults to ``True`` here: each DataLoader worker of each process gets
        its own seed, so ranks do not draw identical augmentations.

        Example::

            Fabric.seed_everything(42)
        """
        return _seed_everything(seed, workers=True if workers is None else workers, verbose=verbose)

    # ----------------------------------------------------------------- callbacks
    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook_name(*args, **kwargs)`` on every callback that defines it.

        Example::

            fabric = Fabric(callbacks=[MyCallback()])
            fabric.call("on_train_epoch_end", results=results)
        """
        for callback in self._callbacks:
            method = getattr(callback, hook_name, None)
            if method is None:
                continue
            if not callable(method):
                rank_zero_warn(
                    f"Fabric.call({hook_name!r}): {type(callback).__name__}.{hook_name} is not callable."
                )
                continue
            method(*args, **_accepted_kwargs(method, kwargs))

    def _call_callbacks(self, hook_name: str, **kwargs: Any) -> None:
        for callback in self._callbacks:
            method = getattr(callback, hook_name, None)
            if callable(method):
                method(**kwargs)

    # ------------------------------------------------------------------- logging
    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log one metric to every logger."""
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log a dict of metrics to every logger; tensors are turned into Python numbers."""
        if not self._loggers:
            return
        values = {k: v.item() if isinstance(v, Tensor) and v.numel() == 1 else v for k, v in metrics.items()}
        for logger in self._loggers:
            logger.log_metrics(metrics=values, step=step)  # keywords, as Lightning calls loggers

    # --------------------------------------------------------------- collectives
    def all_reduce(self, data: Any, group: Any | None = None, reduce_op: ReduceOp | Any = "mean") -> Any:
        """Reduce tensors (or nested collections of them) across processes: sum, mean, max or min.

        Python numbers (and NumPy arrays) are turned into tensors on this process's device first, as
        in Lightning. ``reduce_op`` is ``"sum"``, ``"mean"`` (or ``"avg"``), ``"max"``, ``"min"``, or a
        ``torch.distributed.ReduceOp`` value; ``group`` is a process group (default: all processes).

        Example::

            mean_loss = fabric.all_reduce(loss, reduce_op="mean")
        """
        # lazy: kept out of `from fabric import Fabric`
        from fabric.utilities.collectives import all_reduce_in_group, apply_collective, normalize_reduce_op

        if isinstance(group, str):
            raise TypeError(
                f"Fabric.all_reduce(data, {group!r}): the second argument is the process group, as in Lightning. "
                f"Pass the operation by name: `fabric.all_reduce(data, reduce_op={group!r})`."
            )
        op = normalize_reduce_op(reduce_op)
        data = self._to_tensors(data)
        if group is None and isinstance(op, str):
            return apply_collective(data, lambda t: self._strategy.all_reduce(t, reduce_op=op))  # type: ignore[arg-type]
        return apply_collective(data, lambda t: all_reduce_in_group(t, op, group, self.world_size))

    def all_gather(self, data: Any, group: Any | None = None, sync_grads: bool = False) -> Any:
        """Gather tensors from every process; each gains a leading dimension of size ``world_size``.

        Python numbers (and NumPy arrays) are turned into tensors first, as in Lightning. With
        ``sync_grads=True`` the result keeps the autograd graph, so gradients flow back to every
        process's input; ``group`` is a process group (default: all processes).

        Example::

            losses = fabric.all_gather(loss)  # shape (world_size,)
        """
        # lazy: kept out of `from fabric import Fabric`
        from fabric.utilities.collectives import all_gather_in_group, apply_collective

        data = self._to_tensors(data)
        if group is None and not sync_grads:
            return apply_collective(data, self._strategy.all_gather)
        return apply_collective(data, lambda t: all_gather_in_group(t, group, sync_grads, self.world_size))

    def _to_tensors(self, data: Any) -> Any:
        if isinstance(data, Tensor):
            return data
        # lazy: kept out of `from fabric import Fabric`
        from fabric.utilities.collectives import convert_to_tensors

        return convert_to_tensors(data, self.device)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Send ``obj`` (a tensor or any picklable object) from process ``src`` to all."""
        return self._strategy.broadcast(obj, src=src)

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this point."""
        self._strategy.barrier(name=name)

    @contextmanager
    def rank_zero_first(self, local: bool = False) -> Iterator[None]:
        """Run the block on rank 0 first (e.g. to download data once), then on the others."""
        rank = self.local_rank if local else self.global_rank
        if rank > 0:
            self.barrier()
        yield
        if rank == 0:
            self.barrier()

    # --------------------------------------------------------------- checkpoints
    def save(
        self,
        path: PathLike,
        state: dict[str, Any],
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
        *,
        async_save: bool = False,
    ) -> AsyncSave | None:
        """Save ``state`` (models, optimizers, anything with ``state_dict``, plain values) atomically.

        The file is written beside the target and renamed over it only once complete, so a crash
        mid-save leaves the previous checkpoint intact. The gradient scaler's state is included, and
        so are the random state of every process and the position of every set-up dataloader in
        ``state``: pass the dataloader (``{"loader": loader, ...}``) and :meth:`load` resumes exactly.

        ``async_save=True`` (not in Lightning) returns as soon as the state is copied to CPU memory and
        writes it in a background thread, with the same guarantees (atomic, checksummed, the previous
        checkpoint kept until the new one is complete); training may change the parameters right
        after. The copy costs one CPU copy of this process's state (its shard, for sharded
        strategies). The returned handle has ``done()`` and ``wait()``; the next ``save``, ``load`` or
        :meth:`wait_for_checkpoint` waits for the write and raises its error on every process, and so
        does exit (with a non-zero exit code). Without it (the default) the save is synchronous and
        returns ``None``, as in Lightning.

        Example::

            fabric.save("ckpt.pt", {"model": model, "optimizer": optimizer, "step": step})
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                f"Fabric.save(path, state): `state` must be a dict like {{'model': model}}, got "
                f"{type(state).__name__}."
            )
        if not isinstance(async_save, bool):
            raise TypeError(f"Fabric.save(async_save={async_save!r}): pass True or False.")
        from fabric.checkpoint.options import SaveOptions  # heavy: fabric.checkpoint, not in start-up

        options = SaveOptions(
            filter=filter,
            owners=optimizer_owners(state.values()),
            per_rank_keys=tuple(key for key, value in state.items() if isinstance(value, _FabricDataLoader)),
            async_save=async_save,
        )
        save = self._strategy.save_checkpoint_async if async_save else self._strategy.save_checkpoint
        pending = save(path=os.fspath(path), state=_unwrap_state(state), options=options)
        if pending is None:
            self._strategy.barrier()
        return pending

    def wait_for_checkpoint(self) -> None:
        """Wait for an asynchronous save to be written on every process; raise its error if it failed.

        Every process must call it (it agrees on the outcome); it does nothing when no save is in flight.
        ``save`` and ``load`` do the same by themselves first.
        """
        self._strategy.checkpointer.wait_for_pending()

    def load(
        self,
        path: PathLike,
        state: dict[str, Any] | Module | Optimizer | None = None,
        strict: bool = True,
        *,
        weights_only: bool = True,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Restore ``state`` in place from a checkpoint; return the entries not asked for.

        Without ``state``, the whole checkpoint is returned. A module or an optimizer as ``state`` reads
        the file as its plain state dict (like :meth:`load_raw`; Lightning accepts it too) and returns ``{}``. Loading is safe by default: only tensors
        and plain containers are read, so a checkpoint cannot run code. Pass ``weights_only=False``
        only for files from a source you trust.

        Every checkpoint written by :meth:`save` holds the random state of each process, and the
        position of each set-up dataloader in ``state``; ``load`` restores both, so the resumed run
        draws the same random numbers and sees the same batches as an uninterrupted one. Pass
        ``restore_rng=False`` to keep the current random state (e.g. to fine-tune from a checkpoint).

        Example::

            state = {"model": model, "optimizer": optimizer, "step": 0}
            remainder = fabric.load("ckpt.pt", state)
        """
        unwrapped = _unwrap_state(state) if isinstance(state, dict) else _plain(state)
        from fabric.checkpoint.options import LoadOptions  # heavy: fabric.checkpoint, not in start-up

        options = LoadOptions(
            strict=strict,
            weights_only=weights_only,
            restore_rng=restore_rng,
            owners=optimizer_owners(state.values() if isinstance(state, dict) else [state]),
        )
        remainder = self._strategy.load_checkpoint(path=os.fspath(path), state=unwrapped, options=options)
        if isinstance(state, dict) and isinstance(unwrapped, dict):
            # Plain values were replaced in the unwrapped copy: hand them back to the user's dict.
            for key, value in unwrapped.items():
                if not is_wrapped(state[key]) and state[key] is not value:
                    state[key] = value
        self._strategy.barrier()
        return remainder

    def load_raw(
        self, path: PathLike, obj: Module | Optimizer, strict: bool = True, weights_only: bool = True
    ) -> None:
        """Load a plain ``torch.save`` file of a module's or optimizer's state dict into ``obj``.

        Example::

            fabric.load_raw("pretrained.pt", model)
        """
        raw = _plain(obj)
        owner = optimizer_owners([obj]).get(raw) if isinstance(raw, Optimizer) else None
        self._strategy.load_raw(os.fspath(path), raw, strict=strict, weights_only=weights_only, owner=owner)

    # ------------------------------------------------------------------ helpers
    def _teardown(self) -> None:
        """Release what the run holds: the process group, the environment's changes (called at exit)."""
        self._strategy.teardown()


_SIGNATURES: dict[Any, tuple[bool, frozenset[str]]] = {}


def _accepted_kwargs(method: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The part of ``kwargs`` that ``method`` accepts (all of it when it takes ``**kwargs``).

    Callbacks may declare only the arguments of a hook they use, as in Lightning. A signature is read
    once per function and remembered.
    """
    if not kwargs:
        return kwargs
    function = getattr(method, "__func__", method)
    known = _SIGNATURES.get(function)
    if known is None:
        try:
            parameters = inspect.signature(method).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: pass everything
            known = (True, frozenset())
        else:
            var_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
            names = frozenset(
                p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
            known = (var_keyword, names)
        try:
            _SIGNATURES[function] = known
        except TypeError:  # unhashable callable
            pass
    takes_all, names = known
    return kwargs if takes_all else {k: v for k, v in kwargs.items() if k in names}


def _plain(obj: Any) -> Any:
    """The user's object behind the wrapper; for a module compiled without `_reapply_compile`, the module
    inside the compiled one, so that checkpoints hold plain keys."""
    obj = _unwrap(obj)
    return unwrap_compiled(obj)[0] if isinstance(obj, Module) else obj


def _unwrap_state(state: Mapping[str, Any]) -> dict[str, Any]:
    # Dataloaders stay wrapped: the wrapper is what holds the position in the data.
    unwrapped = {
        key: value if isinstance(value, _FabricDataLoader) else _plain(value) for key, value in state.items()
    }
    # `fabric.save(path, model.state_dict())` must write what `torch.save` would: an OrderedDict stays one.
    return OrderedDict(unwrapped) if isinstance(state, OrderedDict) else unwrapped


__all__ = ["Fabric"]
