"""Name -> (class, constructor arguments) registries, in the shape of Lightning's strategy and accelerator registries.

Users register their own names so that ``Fabric(strategy="my_name")`` builds their class::

    STRATEGY_REGISTRY.register("ddp_static", DDPStrategy, description="DDP, static graph", static_graph=True)

    @ACCELERATOR_REGISTRY.register("my_chip", description="our board")
    class MyAccelerator(Accelerator): ...
"""

from __future__ import annotations

import importlib
from typing import Any


class Registry(dict):
    """A dict of ``name -> {kind: cls, f"{kind}_name": name, "description": str, "init_params": dict}``.

    ``kind`` is ``"strategy"`` or ``"accelerator"`` (the key Lightning's registries use for the class).
    Built-in names are registered by import path (:meth:`register_lazy`): a class's module is imported
    the first time its entry is read, so that choosing ``"ddp"`` does not import the FSDP, DeepSpeed
    and XLA modules. Reading an entry (``registry[name]``, ``values()``, ``items()``) returns the class.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self._kind = kind

    def register(
        self,
        name: str,
        cls: Any = None,
        description: str | None = None,
        override: bool = False,
        **init_params: Any,
    ) -> Any:
        """Register ``cls`` under ``name``; without ``cls``, return a decorator that does.

        ``init_params`` are passed to the constructor each time the name is used.
        """
        if not isinstance(name, str):
            raise TypeError(f"{self._kind} registry: the name must be a string, got {name!r}.")
        if name in self and not override:
            raise ValueError(
                f"{name!r} is already present in the {self._kind} registry. Pass `override=True` to replace it, "
                f"or choose another name."
            )

        def do_register(target: Any) -> Any:
            self[name] = {
                self._kind: target,
                f"{self._kind}_name": name,
                "description": description or "",
                "init_params": init_params,
            }
            return target

        if cls is not None:
            return do_register(cls)
        return do_register

    def register_lazy(
        self, name: str, target: str, description: str | None = None, **init_params: Any
    ) -> None:
        """Register the class at ``target`` (``"package.module:ClassName"``) without importing it yet."""
        if ":" not in target:
            raise ValueError(f"{self._kind} registry: {target!r} is not a 'package.module:ClassName' path.")
        self.register(name, _ImportPath(target), description, **init_params)

    def __getitem__(self, name: str) -> dict[str, Any]:
        data = super().__getitem__(name)
        target = data[self._kind]
        if isinstance(target, _ImportPath):
            data[self._kind] = target.load()  # once: the entry holds the class from now on
        return data

    def values(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [self[name] for name in self]

    def items(self) -> list[tuple[str, dict[str, Any]]]:  # type: ignore[override]
        return [(name, self[name]) for name in self]

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        """A new instance for ``name`` (its class called with its ``init_params``), else ``default``."""
        if name in self:
            data = self[name]
            return data[self._kind](**data["init_params"])
        if default is not None:
            return default
        raise KeyError(f"{name!r} is not in the {self._kind} registry. Available names: {', '.join(self)}.")

    def remove(self, name: str) -> None:
        self.pop(name)

    def available(self) -> list[str]:
        return list(self)

    def __str__(self) -> str:
        return f"Registered {self._kind} names: {', '.join(self)}"


class StrategyRegistry(Registry):
    """Lightning's ``STRATEGY_REGISTRY`` shape (``available_strategies()``)."""

    def __init__(self) -> None:
        super().__init__("strategy")

    def available_strategies(self) -> list[str]:
        return self.available()


class AcceleratorRegistry(Registry):
    """Lightning's ``ACCELERATOR_REGISTRY`` shape (``available_accelerators()``)."""

    def __init__(self) -> None:
        super().__init__("accelerator")

    def available_accelerators(self) -> list[str]:
        return self.available()


class _ImportPath(str):
    """A registered class not imported yet: ``"package.module:ClassName"``."""

    def load(self) -> Any:
        module, _, attribute = self.partition(":")
        return getattr(importlib.import_module(module), attribute)
