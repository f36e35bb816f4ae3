"""The objects the user holds after ``Fabric.setup``: a module, an optimizer and a dataloader.

Each wrapper behaves like what it wraps (attribute access falls through to it, ``isinstance`` checks
against ``torch.nn.Module`` and ``torch.optim.Optimizer`` pass) and adds only the fabric's work:
precision around the forward pass, the strategy's optimizer step, batches moved to the device.
Everything a wrapper decides (which conversions apply, where batches go) is decided at construction,
so the per-step path is a few attribute reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from fabric.strategies.strategy import Strategy

_MODULE_OWN_ATTRIBUTES = frozenset(
    {"_forward_module", "_original_module", "_strategy", "_forward_methods", "_forward", "_precision"}
)


class _FabricModule(Module):
    """A set-up module: runs the forward pass in the precision's context, converting inputs and outputs.

    ``forward_module`` is what the strategy made of the module (the module itself, or e.g. a
    ``DistributedDataParallel`` around it); ``original_module`` is the user's module, whose
    ``state_dict`` and attributes this wrapper exposes unchanged.
    """

    def __init__(
        self, forward_module: Module, strategy: Strategy, original_module: Module | None = None
    ) -> None:
        super().__init__()
        self._forward_module = forward_module
        self._original_module = original_module if original_module is not None else forward_module
        self._strategy = strategy
        self._forward_methods: set[str] = set()
        # kept out of `_modules`: it may be the module itself, which must not be registered twice more
        self.__dict__["_forward"] = self._build_forward()

    def _build_forward(self) -> Callable[..., Any]:
        """Pick, once, the cheapest forward that does what the precision needs."""
        precision = self._strategy.precision
        module = self._forward_module
        context = precision.forward_context if precision.has_forward_context else None
        convert_in = precision.convert_input if precision.converts_input else None
        convert_out = precision.convert_output if precision.converts_output else None

        if context is None and convert_in is None and convert_out is None:
            return module

        def forward(*args: Any, **kwargs: Any) -> Any:
            if convert_in is not None:
                args, kwargs = convert_in(args), convert_in(kwargs)
            with context() if context is not None else nullcontext():
                output = module(*args, **kwargs)
            return convert_out(output) if convert_out is not None else output

        return forward

    @property
    def module(self) -> Module:
        """The user's module (same as in Lightning: ``model.module``)."""
        return self._original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)

    def mark_forward_method(self, method: str | Callable) -> None:
        """Route calls of ``method`` through the strategy's wrapper and the precision, like ``forward``.

        Use this for a method other than ``forward`` that runs the model (e.g. ``generate``), so that
        DDP or FSDP hooks and autocast apply to it.
        """
        name = method if isinstance(method, str) else method.__name__
        if not isinstance(getattr(self._original_module, name, None), Callable):  # type: ignore[arg-type]
            raise AttributeError(
                f"mark_forward_method({method!r}): {type(self._original_module).__name__} has no method "
                f"named {name!r}."
            )
        if name == "forward":
            raise ValueError("mark_forward_method('forward'): forward is already routed through the fabric.")
        self._forward_methods.add(name)

    def _call_marked(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._original_module, name)
        if self._forward_module is self._original_module:
            # Nothing wraps the module: run the method under the precision directly.
            return _PrecisionCall(self._strategy, method)(*args, **kwargs)
        # A wrapper such as DDP runs its hooks around `forward` only, so the method has to be
        # reached through it: `forward` of this instance is pointed at the method for one call.
        original_forward = self._original_module.forward
        self._original_module.forward = method  # type: ignore[method-assign]
        try:
            return self._forward(*args, **kwargs)
        finally:
            self._original_module.forward = original_forward  # type: ignore[method-assign]

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str) -> Any:
        if name in _MODULE_OWN_ATTRIBUTES:
            return super().__getattr__(name)
        forward_methods = self.__dict__.get("_forward_methods")
        if forward_methods and name in forward_methods:
            return lambda *args, **kwargs: self._call_marked(name, *args, **kwargs)
        original = self._modules.get("_original_module") or self.__dict__.get("_original_module")
        if original is None:
            return super().__getattr__(name)
        return getattr(original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MODULE_OWN_ATTRIBUTES or "_original_module" not in self._modules:
            super().__setattr__(name, value)
            return
        setattr(self._original_module, name, value)


class _PrecisionCall:
    def __init__(self, strategy: Strategy, method: Callable) -> None:
        self._precision = strategy.precision
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        p = self._precision
        if p.converts_input:
            args, kwargs = p.convert_input(args), p.convert_input(kwargs)
        with p.forward_context():
            output = self._method(*args, **kwargs)
        return p.convert_output(output) if p.converts_output else output


class _FabricOptimizer(Optimizer):
    """A set-up optimizer: ``step`` goes through the strategy (gradient scaling, sharded steps).

    It subclasses :class:`torch.optim.Optimizer` so that LR schedulers and ``isinstance`` checks
    accept it, but it holds no state of its own: ``param_groups``, ``state`` and ``defaults`` are
    the wrapped optimizer's.
    """

    def __init__(self, optimizer: Optimizer, strategy: Strategy) -> None:
        # Optimizer.__init__ is deliberately not called: this object owns no parameters.
        self.__dict__["_optimizer"] = optimizer
        self.__dict__["_strategy"] = strategy
        self.__dict__["_step"] = strategy.optimizer_step

    @property
    def optimizer(self) -> Optimizer:
        """The user's optimizer."""
        return self._optimizer

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self._optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self._optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self._optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self._optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._optimizer.defaults = value

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            return self._step(self._optimizer)
        return self._step(self._optimizer, closure=closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._strategy.get_optimizer_state(self._optimizer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_optimizer"], name)

    def __repr__(self) -> str:
        return f"FabricOptimizer({self._optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _FabricDataLoader:
    """A set-up dataloader: yields batches already on the device, and knows where it is.

    Iterating it is iterating the wrapped loader (plus a move to the device, for accelerators), so it
    costs nothing per batch on a CPU. It is *stateful*: ``state_dict()`` records the epoch, the number of
    batches already yielded in it, and the random state at the start of the epoch (which decides the
    shuffle order and the workers' seeds). ``Fabric.save``/``Fabric.load`` store and restore it for each
    process, so a run resumed mid-epoch sees exactly the batches an uninterrupted run would have seen.
    Resuming mid-epoch re-reads the epoch's first batches and drops them: that keeps the workers'
    random streams (augmentations) exactly as in the uninterrupted run.
    """

    def __init__(self, dataloader: DataLoader, device: torch.device | None, strategy: Strategy) -> None:
        self._dataloader = dataloader
        self._device = device
        self._strategy = strategy
        self._epoch = 0  # index of the epoch the next (or current) iteration runs
        self._batches = 0  # batches yielded in the current epoch
        self._epoch_rng: dict[str, Any] | None = None  # random state right before the epoch's iterator
        self._resume: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def dataloader(self) -> DataLoader:
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches yielded in it, and the random state its iterator was created from."""
        return {"epoch": self._epoch, "batches": self._batches, "epoch_rng": self._epoch_rng}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict`` at the next ``iter()``: same epoch, same order, same position."""
        self._epoch = int(state_dict["epoch"])
        self._batches = 0
        self._epoch_rng = None
        if state_dict["batches"] > 0 and state_dict["epoch_rng"] is not None:
            self._resume = state_dict

    def _epoch_generator_state(self) -> dict[str, Any]:
        generator = self._dataloader.generator
        state = {"torch": torch.get_rng_state()}
        if generator is not None:
            state["generator"] = generator.get_state()
        return state

    def _set_epoch_generator_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "generator" in state and self._dataloader.generator is not None:
            self._dataloader.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[Any]:
        sampler = getattr(self._dataloader, "sampler", None)
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            # Each pass is a new epoch: a DistributedSampler reshuffles, as users expect.
            set_epoch(self._epoch)
        resume, self._resume = self._resume, None
        if resume is None:
            self._epoch_rng = self._epoch_generator_state()
            self._batches = 0
            iterator = iter(self._dataloader)
            first = next(iterator, _END)
        else:
            from fabric.utilities.rng import capture_rng_state, restore_rng_state

            current = capture_rng_state()
            self._epoch_rng = resume["epoch_rng"]
            self._set_epoch_generator_state(self._epoch_rng)
            iterator = iter(self._dataloader)
            skip = int(resume["batches"])
            first = next(iterator, _END)
            for _ in range(skip):
                first = next(iterator, _END)
            self._batches = skip
            restore_rng_state(current)  # the training's random state, as loaded from the checkpoint
        move = self._strategy.batch_to_device if self._device is not None else None
        batch = first
        while batch is not _END:
            self._batches += 1
            yield move(batch, self._device) if move is not None else batch
            batch = next(iterator, _END)
        self._epoch += 1
        self._batches = 0
        self._epoch_rng = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_dataloader"], name)


_END = object()


def _unwrap(obj: Any) -> Any:
    """The user's object behind a fabric wrapper (or ``obj`` itself)."""
    if isinstance(obj, _FabricModule):
        return obj._original_module
    if isinstance(obj, _FabricOptimizer):
        return obj.optimizer
    if isinstance(obj, _FabricDataLoader):
        return obj.dataloader
    return obj


def is_wrapped(obj: Any) -> bool:
    """Whether ``obj`` was returned by one of the ``Fabric.setup*`` methods."""
    return isinstance(obj, (_FabricModule, _FabricOptimizer, _FabricDataLoader))


__all__ = ["_FabricDataLoader", "_FabricModule", "_FabricOptimizer", "is_wrapped"]
