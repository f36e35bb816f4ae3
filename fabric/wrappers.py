"""The objects the user holds after ``Fabric.setup``: a module, an optimizer and a dataloader.

Each wrapper behaves like what it wraps (attribute access falls through to it; ``isinstance`` checks
against ``torch.nn.Module``, ``torch.optim.Optimizer`` and the optimizer's own class pass) and adds
only the fabric's work: precision around the forward pass, the strategy's optimizer step, batches
moved to the device. Everything a wrapper decides (which conversions apply, where batches go) is
decided at construction and kept as plain attributes, so the per-step path is a few attribute reads,
and ``copy.deepcopy`` of a wrapper gives a wrapper of the copy.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import Module
from torch.nn.modules import module as _torch_module
from torch.optim import Optimizer

from fabric.loader_wrapper import _FabricDataLoader

if TYPE_CHECKING:
    from fabric.strategies.strategy import Strategy

_MODULE_OWN_ATTRIBUTES = frozenset(
    {
        "_forward_module",
        "_forward_target",
        "_original_module",
        "_strategy",
        "_precision",
        "_forward_methods",
        "_step_methods",
        "_plain_forward",
        "_routes_through_forward",
    }
)
# torch's registries of hooks on every module (`torch.nn.modules.module.register_module_forward_hook` and
# kin), read by `_FabricModule.__call__`: while any holds a hook, the wrapper takes `Module.__call__`'s full
# path. The registries are dicts that torch mutates in place, so holding them is enough; if a torch
# version lacks one, the wrapper always takes the full path.
_HOOK_REGISTRIES = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)
_GLOBAL_HOOKS: tuple[dict, ...] | None = (
    tuple(getattr(_torch_module, name) for name in _HOOK_REGISTRIES)
    if all(hasattr(_torch_module, name) for name in _HOOK_REGISTRIES)
    else None
)
# Lightning's step methods: on a module wrapped by e.g. DDP, calling them directly would bypass the
# wrapper's forward (no gradient averaging). They are routed through it, as Lightning routes them.
_STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


class _FabricModule(Module):
    """A set-up module: runs the forward pass in the precision's context, converting inputs and outputs.

    ``forward_module`` is what the strategy made of the module (the module itself, or e.g. a
    ``DistributedDataParallel`` around it); ``original_module`` is the user's module, whose
    ``state_dict`` and attributes this wrapper exposes unchanged. ``compiled``: ``forward_module`` is
    a ``torch.compile`` wrapper the facade put around the strategy's result, through which marked
    methods go as through a strategy's wrapper.

    There is one forward path: :meth:`forward` applies the precision around a call of
    ``_forward_target`` (``forward_module``). A marked method reaches the model through it too, by
    pointing one callee at the method for one call: the user's module's ``forward`` when the strategy
    wraps the model (so its work runs), ``_forward_target`` when nothing does (so no module call, no
    hooks, but the precision).
    """

    #: what :meth:`forward` calls: ``forward_module``; for one call, a marked method (see ``_call_marked``)
    _forward_target: Callable[..., Any]

    def __init__(
        self,
        forward_module: Module,
        strategy: Strategy,
        original_module: Module | None = None,
        *,
        compiled: bool = False,
    ) -> None:
        super().__init__()
        original = original_module if original_module is not None else forward_module
        self._forward_module = forward_module
        self._original_module = original
        precision = strategy.precision
        # Plain references (the modules also beside `_modules`): read on every forward without going
        # through nn.Module's __getattr__. They are ordinary attributes, so a deepcopy maps them to the
        # copy's own modules.
        self.__dict__["_forward_module"] = forward_module
        self.__dict__["_forward_target"] = forward_module
        self.__dict__["_original_module"] = original
        self.__dict__["_strategy"] = strategy
        self.__dict__["_precision"] = precision
        self.__dict__["_forward_methods"] = set()
        self.__dict__["_plain_forward"] = not (
            precision.has_forward_context or precision.converts_input or precision.converts_output
        )
        # Whether methods other than `forward` must reach the model through `forward_module`: the strategy
        # declares where it put its work (FSDP2 hooks the same object, so comparing objects cannot tell).
        wrapped = strategy.module_wrapping != "none" or compiled
        self.__dict__["_routes_through_forward"] = wrapped
        self.__dict__["_step_methods"] = frozenset(
            name for name in _STEP_METHODS if wrapped and callable(getattr(original, name, None))
        )

    @property
    def module(self) -> Module:
        """The user's module (same as in Lightning: ``model.module``)."""
        return self._original_module

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter or buffer (CPU for a module without any)."""
        for tensor in _tensors(self._original_module):
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's first floating-point parameter or buffer."""
        for tensor in _tensors(self._original_module):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.get_default_dtype()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``self.forward(...)``, without ``Module.__call__``'s dispatch when it would do nothing.

        The wrapper is called once per step; ``Module.__call__`` costs three calls there (its dispatch, its
        implementation and a tracing-state query) and runs only hooks, which a wrapper has none of unless
        the user registers one on it. With a hook on the wrapper, a global module hook, or ``compile()``
        of the wrapper in place, the call takes ``Module.__call__`` as any module's does.
        """
        hooks = _GLOBAL_HOOKS
        if (
            hooks is None
            or hooks[0]
            or hooks[1]
            or hooks[2]
            or hooks[3]
            or self._forward_pre_hooks
            or self._forward_hooks
            or self._backward_pre_hooks
            or self._backward_hooks
            or self._compiled_call_impl is not None
        ):
            return Module.__call__(self, *args, **kwargs)
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._plain_forward:
            return self._forward_target(*args, **kwargs)
        precision = self._precision
        if precision.converts_input:
            args, kwargs = precision.convert_input(args), precision.convert_input(kwargs)
        with precision.forward_context():
            output = self._forward_target(*args, **kwargs)
        return precision.convert_output(output) if precision.converts_output else output

    def mark_forward_method(self, method: str | Callable) -> None:
        """Route calls of ``method`` through the strategy's wrapper and the precision, like ``forward``.

        Use this for a method other than ``forward`` that runs the model (e.g. ``generate``), so that
        DDP or FSDP hooks and autocast apply to it. The method may call ``forward`` itself.
        """
        name = method if isinstance(method, str) else method.__name__
        if not callable(getattr(self._original_module, name, None)):
            raise AttributeError(
                f"mark_forward_method({method!r}): {type(self._original_module).__name__} has no method "
                f"named {name!r}."
            )
        if name == "forward":
            raise ValueError(
                "mark_forward_method('forward'): You cannot mark the forward method itself; it is already routed "
                "through the fabric."
            )
        self._forward_methods.add(name)

    def _call_marked(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._original_module, name)
        if self._routes_through_forward:
            # A wrapper such as DDP (or FSDP2's hooks) runs its work around the module's `forward` only.
            return self._through_forward(self._original_module, "forward", method, args, kwargs)
        # Nothing wraps the module: the precision applies, but no module call (hooks) happens.
        return self._through_forward(self, "_forward_target", method, args, kwargs)

    def _through_forward(
        self, owner: Module, name: str, method: Callable, args: tuple, kwargs: dict[str, Any]
    ) -> Any:
        # `owner.<name>` (what the forward path ends in calling) is pointed at the method for one call of
        # `forward`, and put back before the method runs, so that the method's own calls of `forward` (of
        # the module, or of this wrapper) reach the real one. The closures hold `owner`, not its
        # `__dict__`: torch.compile traces them, and a dict that holds the closure is a cycle it cannot.
        had = name in owner.__dict__
        saved = owner.__dict__.get(name)

        def restore() -> None:
            if had:
                owner.__dict__[name] = saved
            else:
                owner.__dict__.pop(name, None)

        def redirected(*inner_args: Any, **inner_kwargs: Any) -> Any:
            restore()
            return method(*inner_args, **inner_kwargs)

        owner.__dict__[name] = redirected
        try:
            return self.forward(*args, **kwargs)
        finally:
            restore()

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self._original_module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._original_module.load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> _FabricModule:
        # nn.Module.train would set `training` on this wrapper through __setattr__, i.e. on the user's
        # module only; the wrapper's own flag must follow too, so that `model.training` is right.
        self.__dict__["training"] = mode
        self._forward_module.train(mode)
        if self._original_module is not self._forward_module:
            self._original_module.train(mode)
        return self

    def __getattr__(self, name: str) -> Any:
        if name in _MODULE_OWN_ATTRIBUTES:
            return super().__getattr__(name)
        forward_methods = self.__dict__.get("_forward_methods")
        if forward_methods and name in forward_methods:
            return lambda *args, **kwargs: self._call_marked(name, *args, **kwargs)
        step_methods = self.__dict__.get("_step_methods")
        if step_methods and name in step_methods:
            user_module = self._original_module
            method = getattr(user_module, name)
            return lambda *args, **kwargs: self._through_forward(user_module, "forward", method, args, kwargs)
        original = self._modules.get("_original_module") or self.__dict__.get("_original_module")
        if original is None:
            return super().__getattr__(name)
        return getattr(original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MODULE_OWN_ATTRIBUTES or "_original_module" not in self._modules:
            super().__setattr__(name, value)
            return
        setattr(self._original_module, name, value)

    def __deepcopy__(self, memo: dict[int, Any]) -> _FabricModule:
        # The copy gets its own modules, but shares the run's strategy and precision (one process
        # group, one gradient scaler): a copy (EMA, teacher) computes with its own weights.
        memo[id(self._strategy)] = self._strategy
        memo[id(self._precision)] = self._precision
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new


def _tensors(module: Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


class _FabricOptimizer(Optimizer):
    """A set-up optimizer: ``step`` goes through the strategy (gradient scaling, sharded steps).

    It holds no state of its own: ``param_groups``, ``state`` and ``defaults`` are the wrapped
    optimizer's. Each set-up optimizer is an instance of a subclass made once per optimizer class
    (``FabricAdamW`` for ``AdamW``, see :func:`_optimizer_wrapper_class`), so that
    ``isinstance(optimizer, torch.optim.AdamW)`` holds as for the user's object, without rewriting
    ``__class__`` of an instance.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        strategy: Strategy,
        callbacks: list[Any] | None = None,
        module: Module | None = None,
    ) -> None:
        # Optimizer.__init__ is deliberately not called: this object owns no parameters.
        precision = strategy.precision
        self.__dict__["_optimizer"] = optimizer
        # The model it updates: a sharding strategy keys optimizer state by parameter name, so it needs
        # the model to save or load that state. Weak: the optimizer must not keep a model alive.
        self.__dict__["_module_ref"] = weakref.ref(module) if module is not None else None
        self.__dict__["_strategy"] = strategy
        self.__dict__["_step"] = strategy._step_call("optimizer_step")
        self.__dict__["_precision"] = precision
        # decided once: whether `loss.backward()` in place of `fabric.backward(loss)` must be caught
        self.__dict__["_check_backward"] = precision.requires_fabric_backward
        self.__dict__["_backwards_seen"] = precision.backward_calls
        hooks = [getattr(c, "on_after_optimizer_step", None) for c in callbacks or ()]
        self.__dict__["_after_step_hooks"] = [h for h in hooks if callable(h)]
        # `zero_grad` adds nothing to the optimizer's: the instance attribute is its bound method, so a
        # step's `optimizer.zero_grad()` makes no call of the wrapper's (the method below is the fallback)
        self.__dict__["zero_grad"] = optimizer.zero_grad

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
        if self._check_backward and closure is None:  # a closure runs its own fabric.backward
            calls = self._precision.backward_calls
            if calls == self._backwards_seen:
                self._no_fabric_backward()
            self.__dict__["_backwards_seen"] = calls
        if closure is None:
            output = self._step(self._optimizer)
        else:
            output = self._step(self._optimizer, closure=closure)
        for hook in self._after_step_hooks:
            hook(strategy=self._strategy, optimizer=self._optimizer)
        return output

    def _no_fabric_backward(self) -> None:
        # No fabric.backward since this optimizer's last step: gradients here came from a plain
        # `loss.backward()`, which skipped the loss scaling the precision needs.
        if any(p.grad is not None for group in self._optimizer.param_groups for p in group["params"]):
            raise RuntimeError(
                f"The precision {self._precision.precision!r} needs `fabric.backward(loss)` instead of "
                f"`loss.backward()`: the gradients of this optimizer were computed without it "
                f"({self._precision.fabric_backward_reason}). Replace `loss.backward()` with `fabric.backward(loss)`."
            )

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        self._optimizer.zero_grad(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The full, index-keyed state (as ``torch.optim.Optimizer.state_dict``), gathered by the strategy."""
        return self._strategy.get_optimizer_state(self._optimizer, self._module(), every_rank=True)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` gives, through the same strategy (FSDP shards it again)."""
        self._strategy.load_optimizer_state_dict(self._optimizer, state_dict, self._module())

    def _module(self) -> Module | None:
        ref = self.__dict__.get("_module_ref")
        return ref() if ref is not None else None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        try:
            optimizer = self.__dict__["_optimizer"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(optimizer, name)

    def __repr__(self) -> str:
        return f"FabricOptimizer({self._optimizer!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The class is made at run time: rebuild from the wrapped optimizer (copy, deepcopy, pickle).
        # a weak reference does not pickle; an unpickled wrapper is not linked to a model
        state = {key: value for key, value in self.__dict__.items() if key != "_module_ref"}
        return _rebuild_optimizer, (self._optimizer, self._strategy), {"_state": state}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state.get("_state", state))

    def __deepcopy__(self, memo: dict[int, Any]) -> _FabricOptimizer:
        # The copy wraps a copy of the optimizer, and shares the run's strategy and precision.
        memo[id(self._strategy)] = self._strategy
        memo[id(self._precision)] = self._precision
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new


_OPTIMIZER_CLASSES: dict[type, type] = {}


def _optimizer_wrapper_class(optimizer_class: type) -> type:
    """The wrapper class for ``optimizer_class``: a subclass of both, made on first use and reused.

    Our class comes first in the method order, so ``step``, ``zero_grad`` and the state accessors
    are the wrapper's; every other method of the optimizer's class also resolves (``isinstance``,
    LR schedulers and methods such as ``register_step_pre_hook`` work on the wrapper).
    """
    wrapper_class: type | None = _OPTIMIZER_CLASSES.get(optimizer_class)
    if wrapper_class is None:
        if issubclass(optimizer_class, _FabricOptimizer) or optimizer_class is Optimizer:
            wrapper_class = _FabricOptimizer
        else:
            wrapper_class = type(
                f"Fabric{optimizer_class.__name__}",
                (_FabricOptimizer, optimizer_class),
                {"__module__": __name__, "__doc__": _FabricOptimizer.__doc__},
            )
        _OPTIMIZER_CLASSES[optimizer_class] = wrapper_class
    return wrapper_class


def optimizer_owners(objects: Iterable[Any]) -> dict[Optimizer, Module]:
    """The model that each set-up optimizer among ``objects`` updates, as its wrapper knows it from setup.

    A sharded checkpoint keys optimizer state by the model's parameter names, so saving or loading
    it needs that model; the wrapper is the one record of it (a plain optimizer is matched to a
    model in the same state by the checkpoint pipeline).
    """
    owners: dict[Optimizer, Module] = {}
    for obj in objects:
        if isinstance(obj, _FabricOptimizer):
            module = obj._module()
            if module is not None:
                owners[obj.optimizer] = module
    return owners


def wrap_optimizer(
    optimizer: Optimizer,
    strategy: Strategy,
    callbacks: list[Any] | None = None,
    module: Module | None = None,
) -> _FabricOptimizer:
    """A set-up optimizer of the right wrapper class for ``optimizer`` (``module``: the model it updates)."""
    return _optimizer_wrapper_class(type(optimizer))(optimizer, strategy, callbacks, module)


def _rebuild_optimizer(optimizer: Optimizer, strategy: Strategy) -> _FabricOptimizer:
    wrapper = _optimizer_wrapper_class(type(optimizer))
    return object.__new__(wrapper)  # type: ignore[no-any-return]


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


__all__ = [
    "_FabricDataLoader",
    "_FabricModule",
    "_FabricOptimizer",
    "is_wrapped",
    "optimizer_owners",
    "wrap_optimizer",
]
