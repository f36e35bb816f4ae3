"""Turns the user's arguments and the environment into the parts of a run, once.

This is the only place that knows the rules between the parts: what "auto" means, which precision
fits which accelerator, which strategy a device count implies. Every invalid argument or combination
fails here, before any process is started, with a message that names the argument, the value
received, the values allowed and the fix.

Settings may also come from the environment, as written by ``fabric run``
(``FABRIC_ACCELERATOR``, ``FABRIC_STRATEGY``, ``FABRIC_DEVICES``, ``FABRIC_NUM_NODES``,
``FABRIC_PRECISION``). A value in code that contradicts one of them is an error: silently
preferring either would run something other than what one of the two asked for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fabric.accelerators import (
    ACCELERATOR_REGISTRY,
    ACCELERATORS,
    Accelerator,
    CPUAccelerator,
    CUDAAccelerator,
    MPSAccelerator,
    XLAAccelerator,
)
from fabric.accelerators.xla import require_torch_xla
from fabric.precision import MixedPrecision, Precision, TruePrecision
from fabric.strategies import SingleDeviceStrategy, Strategy
from fabric.utilities.choices import ACCELERATOR_NAMES, PRECISION_ALIASES, PRECISIONS, XLA_PRECISIONS

if TYPE_CHECKING:
    from fabric.launchers.launcher import Launcher

#: strategies that run on XLA devices (and the only ones that do)
XLA_STRATEGIES = ("single_xla", "xla", "xla_fsdp")

_ENV_PREFIX = "FABRIC_"


def _strategy_registry() -> Any:
    """Strategy names and what each one means (class and constructor arguments), users' own included.

    Built on demand; the registry imports only the class of the name that is chosen.
    """
    from fabric.strategies.registry import STRATEGY_REGISTRY  # lazy: kept out of `from fabric import Fabric`

    return STRATEGY_REGISTRY


class Connector:
    """Resolves ``Fabric(...)`` arguments plus environment variables into accelerator, precision,
    strategy (with its environment and launcher)."""

    def __init__(
        self,
        accelerator: str | Accelerator = "auto",
        strategy: str | Strategy = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        plugins: Any = None,
    ) -> None:
        accelerator = self._from_env("accelerator", accelerator, "auto")
        strategy = self._from_env("strategy", strategy, "auto")
        devices = self._from_env("devices", devices, "auto")
        num_nodes = _num_nodes(self._from_env("num_nodes", num_nodes, 1))
        precision = self._from_env("precision", precision, None)

        plugin_precision, plugin_environment, plugin_checkpoint_io = self._split_plugins(plugins)
        if plugin_precision is not None and precision is not None:
            raise ValueError(
                f"Fabric(precision={precision!r}, plugins=[{type(plugin_precision).__name__}(...)]): the precision "
                f"was given twice. Pass either the `precision` string or a precision plugin, not both."
            )
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise ValueError(f"Fabric(num_nodes={num_nodes!r}): num_nodes must be an int >= 1.")

        self.accelerator = self._resolve_accelerator(accelerator, strategy)
        if devices == "auto" and self.accelerator.name == "cpu":
            devices = self._external_processes_per_node(num_nodes) or devices
        self.devices = devices
        self.parallel_devices = self.accelerator.get_parallel_devices(self._parse_devices(devices))
        self.num_nodes = num_nodes
        self.precision = plugin_precision or self._resolve_precision(precision, self.accelerator)
        self.strategy = self._resolve_strategy(strategy, plugin_environment)
        if plugin_checkpoint_io is not None:
            self.strategy.checkpoint_io = plugin_checkpoint_io

    def _parse_devices(self, devices: Any) -> Any:
        if self.accelerator.name == "cpu" and isinstance(devices, (list, tuple)):
            # Lightning's exception type (TypeError), with what to pass instead.
            raise TypeError(
                f"Fabric(accelerator='cpu', devices={devices!r}): a list selects devices by index, and CPUs have "
                f"none. On CPU, `devices` is the number of processes: an int >= 1, -1 or 'auto' (one process). "
                f"Pass devices={max(len(devices), 1)} for {max(len(devices), 1)} process(es), or "
                f"accelerator='cuda' to select GPUs {list(devices)}."
            )
        return self.accelerator.parse_devices(devices)

    # ------------------------------------------------------------------ environment
    @staticmethod
    def _from_env(name: str, value: Any, default: Any) -> Any:
        env_value = os.environ.get(_ENV_PREFIX + name.upper())
        if env_value is None or env_value == str(default):
            return value
        if value is None or (isinstance(value, str) and value == default) or value == default:
            return env_value
        if _normalized(name, value) != _normalized(name, env_value):
            raise ValueError(
                f"Fabric({name}={value!r}) contradicts {_ENV_PREFIX}{name.upper()}={env_value!r}, set by "
                f"`fabric run --{name.replace('_', '-')}`. Remove the argument from `Fabric(...)` to use the "
                f"command line's value, or make the two agree."
            )
        return value

    @staticmethod
    def _split_plugins(plugins: Any) -> tuple[Precision | None, Any, Any]:
        if plugins is None:
            return None, None, None
        from fabric.checkpoint.checkpoint_io import CheckpointIO  # lazy: only when plugins are given
        from fabric.environments.cluster_environment import ClusterEnvironment

        items = plugins if isinstance(plugins, (list, tuple)) else [plugins]
        precision: Precision | None = None
        environment: ClusterEnvironment | None = None
        checkpoint_io: CheckpointIO | None = None
        for plugin in items:
            if isinstance(plugin, Precision):
                if precision is not None:
                    raise ValueError(
                        "Fabric(plugins=...): more than one precision plugin was given; pass one."
                    )
                precision = plugin
            elif isinstance(plugin, ClusterEnvironment):
                if environment is not None:
                    raise ValueError(
                        "Fabric(plugins=...): more than one cluster environment was given; pass one."
                    )
                environment = plugin
            elif isinstance(plugin, CheckpointIO):
                if checkpoint_io is not None:
                    raise ValueError(
                        "Fabric(plugins=...): more than one CheckpointIO plugin was given; pass one."
                    )
                checkpoint_io = plugin
            else:
                raise TypeError(
                    f"Fabric(plugins=[{plugin!r}]): a plugin must be a Precision, a ClusterEnvironment or a "
                    f"CheckpointIO instance, got {type(plugin).__name__}."
                )
        return precision, environment, checkpoint_io

    # ------------------------------------------------------------------ accelerator
    @staticmethod
    def _resolve_accelerator(accelerator: str | Accelerator, strategy: Any) -> Accelerator:
        if isinstance(accelerator, Accelerator):
            return accelerator
        if (
            isinstance(accelerator, str)
            and accelerator not in ACCELERATORS
            and accelerator in ACCELERATOR_REGISTRY
        ):
            return ACCELERATOR_REGISTRY.get(accelerator)  # a name the user registered
        if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATOR_NAMES:
            raise ValueError(
                f"Fabric(accelerator={accelerator!r}) is not a known accelerator. Allowed: "
                f"{', '.join(repr(a) for a in ACCELERATOR_NAMES)} or an Accelerator instance."
            )
        name = accelerator.lower()
        if name == "auto" and _names_xla_strategy(strategy):
            name = "xla"  # strategy="xla" (or an XLA strategy instance) implies the XLA accelerator
        if name in ("tpu", "xla"):
            # is_available() only asks whether torch-xla is installed (find_spec), never imports it
            require_torch_xla(f"accelerator={accelerator!r}")
            return XLAAccelerator()
        if name == "auto":
            if XLAAccelerator.is_available():
                return XLAAccelerator()
            if CUDAAccelerator.is_available():
                return CUDAAccelerator()
            if MPSAccelerator.is_available():
                return MPSAccelerator()
            return CPUAccelerator()
        if name == "gpu":
            if CUDAAccelerator.is_available():
                return CUDAAccelerator()
            if MPSAccelerator.is_available():
                return MPSAccelerator()
            raise RuntimeError(
                "Fabric(accelerator='gpu'): no GPU is available on this machine (neither CUDA nor MPS). "
                "Use accelerator='cpu' or 'auto'."
            )
        cls = ACCELERATORS[name]
        if not cls.is_available():
            raise RuntimeError(
                f"Fabric(accelerator={accelerator!r}): {name} is not available on this machine. "
                f"Use accelerator='auto' to pick what is available, or 'cpu'."
            )
        return cls()

    # -------------------------------------------------------------------- precision
    @staticmethod
    def _resolve_precision(precision: Any, accelerator: Accelerator) -> Precision:
        if precision is None:
            precision = "32-true"
        name = PRECISION_ALIASES.get(precision, precision)
        if name not in PRECISIONS:
            raise ValueError(
                f"Fabric(precision={precision!r}) is not supported. Allowed: "
                f"{', '.join(repr(p) for p in PRECISIONS)} (aliases: 32, 64, 16, 'bf16')."
            )
        if accelerator.name == "xla" and name not in XLA_PRECISIONS:
            raise ValueError(
                f"Fabric(accelerator='xla', precision={precision!r}): XLA devices support "
                f"{', '.join(repr(p) for p in XLA_PRECISIONS)}. Use 'bf16-true' or 'bf16-mixed' for half precision "
                f"(TPUs compute in bfloat16; float16 and float64 are not supported here)."
            )
        if name == "32-true":
            return Precision()
        if name.endswith("-true"):
            return TruePrecision(name)
        device_type = accelerator.name or "cpu"
        return MixedPrecision(name, device_type=device_type)

    # --------------------------------------------------------------------- strategy
    def _resolve_strategy(self, strategy: str | Strategy, environment: Any) -> Strategy:
        num_processes = len(self.parallel_devices) * self.num_nodes
        if isinstance(strategy, Strategy):
            instance = strategy
        else:
            if not isinstance(strategy, str):
                raise TypeError(
                    f"Fabric(strategy={strategy!r}): pass a strategy name or a Strategy instance, got "
                    f"{type(strategy).__name__}."
                )
            name = strategy.lower()
            if self.accelerator.name == "xla":
                name = _xla_strategy_name(name, strategy, num_processes)
            elif name in XLA_STRATEGIES:
                raise ValueError(
                    f"Fabric(strategy={strategy!r}, accelerator={self.accelerator.name!r}): XLA strategies run on "
                    f"XLA devices. Pass accelerator='tpu' (or 'xla'), or a strategy for {self.accelerator.name}."
                )
            if name == "auto":
                name = "ddp" if num_processes > 1 or self._external_multiprocess() else "single_device"
            if name == "single_device":
                if num_processes > 1:
                    raise ValueError(
                        f"Fabric(strategy='single_device', devices={self.devices!r}, num_nodes={self.num_nodes}): "
                        f"a single-device strategy cannot use {num_processes} devices. Pass devices=1 or a "
                        f"multi-process strategy such as 'ddp'."
                    )
                return self._finish(SingleDeviceStrategy(device=self.parallel_devices[0]))
            registry = _strategy_registry()
            if name not in registry:
                known = ", ".join(repr(n) for n in ("auto", "single_device", *registry))
                raise ValueError(f"Fabric(strategy={strategy!r}) is not a known strategy. Allowed: {known}.")
            instance = registry.get(name)
        return self._finish(instance, environment)

    @staticmethod
    def _external_processes_per_node(num_nodes: int) -> int | None:
        """Under torchrun or a scheduler, ``devices="auto"`` on CPU means the processes it started per node."""
        from fabric.environments import detect_environment  # lazy: kept out of `from fabric import Fabric`

        environment = detect_environment()
        if not environment.creates_processes_externally or environment.world_size() <= 1:
            return None
        return max(1, environment.world_size() // num_nodes)

    @staticmethod
    def _external_multiprocess() -> bool:
        """Whether torchrun or a scheduler started this process as one of several."""
        from fabric.environments import detect_environment  # lazy: kept out of `from fabric import Fabric`

        environment = detect_environment()
        return environment.creates_processes_externally and environment.world_size() > 1

    def _finish(self, strategy: Strategy, environment: Any = None) -> Strategy:
        if strategy.accelerator is None:
            strategy.accelerator = self.accelerator
        if type(strategy.precision) is Precision and type(self.precision) is not Precision:
            strategy.precision = self.precision
        configure = getattr(strategy, "configure", None)
        if configure is not None:
            # Multi-process strategies learn the topology here.
            configure(
                parallel_devices=self.parallel_devices, num_nodes=self.num_nodes, environment=environment
            )
            strategy.launcher = _launcher_for(strategy, self.num_nodes)
        return strategy


def _launcher_for(strategy: Strategy, num_nodes: int) -> Launcher | None:
    """How the processes of ``strategy`` come to exist.

    ``None`` where this process is the only one or where torchrun or a scheduler already started them
    all; otherwise a re-run of the user's command (``"popen"``) or ``torch.multiprocessing``'s spawn or
    fork for ``fabric.launch(fn)``.
    """
    if strategy.start_method is None:
        return None
    # Multi-process only: neither the strategy base nor the launchers belong in `import fabric`.
    from fabric.strategies.parallel import ParallelStrategy

    if not isinstance(strategy, ParallelStrategy):
        return None
    environment = strategy.cluster_environment
    assert environment is not None  # set by `configure`
    if environment.creates_processes_externally:
        return None
    if strategy.start_method == "popen":
        # Multi-process only, as above.
        from fabric.launchers.subprocess_script import SubprocessScriptLauncher

        return SubprocessScriptLauncher(environment, strategy.num_processes, num_nodes)
    # Multi-process only, as above.
    from fabric.launchers.multiprocessing import MultiprocessingLauncher

    return MultiprocessingLauncher(strategy, start_method=strategy.start_method)


def _normalized(name: str, value: Any) -> str:
    """A setting as `fabric run` writes it, so that ``precision=16`` agrees with ``--precision 16-mixed``."""
    if name == "precision":
        value = PRECISION_ALIASES.get(value, value)
    return str(value)


def _names_xla_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` (a name or an instance) is one of the XLA strategies."""
    if isinstance(strategy, str):
        return strategy.lower() in XLA_STRATEGIES
    # lazy: kept out of `from fabric import Fabric` (XLA only)
    from fabric.strategies.xla_common import XLAStepMixin

    return isinstance(strategy, XLAStepMixin)


def _xla_strategy_name(name: str, given: str, num_devices: int) -> str:
    """The strategy name on an XLA accelerator: "auto" is one device or SPMD over all of them."""
    if name in ("auto", "single_device"):
        return "single_xla" if num_devices == 1 else "xla"
    if name not in XLA_STRATEGIES:
        raise ValueError(
            f"Fabric(accelerator='xla', strategy={given!r}): on XLA devices the strategies are "
            f"{', '.join(repr(s) for s in XLA_STRATEGIES)} (or 'auto'). Multi-device XLA runs through SPMD "
            f"(strategy='xla' for data parallel, 'xla_fsdp' for sharded parameters), not through {given!r}."
        )
    if name == "single_xla" and num_devices != 1:
        raise ValueError(
            f"Fabric(strategy='single_xla', devices={num_devices}): a single-device strategy uses one XLA device. "
            f"Pass devices=1, or strategy='xla' to use all {num_devices}."
        )
    return name


def _num_nodes(value: Any) -> int:
    """``num_nodes`` as an int >= 1 (an int, or its digits as ``FABRIC_NUM_NODES`` writes them)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Fabric(num_nodes={value!r}): num_nodes is the number of machines, an int >= 1 (e.g. num_nodes=2); "
            f"got {type(value).__name__} {value!r}."
        )
    return value


#: values that are never a callback: Fabric.call would find no hook on them and silently do nothing
_NOT_CALLBACKS = (int, float, complex, str, bytes, bool, type(None))


def resolve_callbacks(callbacks: Any) -> list[Any]:
    """``Fabric(callbacks=...)`` as a list: one object or a list/tuple of objects whose methods are hooks.

    Lightning accepts anything here (``callbacks=5`` too) and then never calls it; a number, a string
    or None in the list is a mistake, refused here with what to pass.
    """
    if callbacks is None:
        return []
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for item in items:
        if isinstance(item, (*_NOT_CALLBACKS, type)):
            what = "a class (pass an instance)" if isinstance(item, type) else type(item).__name__
            raise TypeError(
                f"Fabric(callbacks={callbacks!r}): {item!r} is {what}, not a callback. A callback is an object "
                f"whose methods `fabric.call('hook_name', ...)` invokes by name (e.g. an instance of a class with "
                f"an `on_train_epoch_end` method); pass one such object or a list of them."
            )
    return items


def backward_argument_error(tensor: Any) -> TypeError | None:
    """The error for ``Fabric.backward(tensor)`` with something that is not a tensor, else None."""
    if isinstance(tensor, Tensor):
        return None
    return TypeError(
        f"Fabric.backward(tensor={tensor!r}): expected the loss as a torch.Tensor computed from the model's "
        f"output (it carries the graph to differentiate), got {type(tensor).__name__}. Pass the loss tensor "
        f"itself, not `loss.item()` or a Python number."
    )
