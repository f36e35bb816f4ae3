"""DeepSpeed ZeRO (stages 1, 2, 3, with CPU or NVMe offload) behind the strategy interface.

The engine is DeepSpeed's own: this file builds its config from Lightning-style arguments (a user's
config wins; a contradiction between the two is an error), starts it on the process group our
parallel base created, and routes ``backward`` and ``optimizer.step()`` through the engine. Its
checkpoints are a layout of the one pipeline (:mod:`fabric.checkpoint.deepspeed_layout`): DeepSpeed's
directory written atomically together with our per-rank resume state.

DeepSpeed runs on a CPU too: without oneCCL its CPU accelerator talks over gloo. It is imported only
when a DeepSpeed strategy is set up, never by ``import fabric``.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from fabric.accelerators.accelerator import Accelerator
from fabric.checkpoint.deepspeed_format import (
    _INSTALL_HINT,
    consolidate_deepspeed,
    deepspeed_available,
    is_deepspeed_checkpoint,
    resolve_deepspeed_checkpoint,
)
from fabric.checkpoint.host import LayoutName
from fabric.environments import ClusterEnvironment
from fabric.precision import MixedPrecision, Precision, TruePrecision
from fabric.precision.deepspeed import DeepSpeedPrecision
from fabric.strategies.deepspeed_config import (
    add_cpu_zero3_sizes,
    check_arguments,
    config_from_arguments,
    engine_config,
    merge_config,
    offloads_optimizer,
    read_config,
)
from fabric.strategies.parallel import DEFAULT_TIMEOUT, ParallelStrategy
from fabric.strategies.strategy import BackwardSyncControl
from fabric.utilities.allocator import return_large_blocks_to_system
from fabric.utilities.types import PathLike

_NVME_DEFAULT = "/local_nvme"


class DeepSpeedStrategy(ParallelStrategy, BackwardSyncControl):
    """ZeRO data parallelism with DeepSpeed: optimizer states (stage 1), gradients (2) and parameters (3)
    sharded across processes, optionally offloaded to CPU memory or NVMe.

    The arguments carry Lightning's names. Without ``config`` they build the DeepSpeed config; with a
    ``config`` (a dict or the path of a JSON file) the config wins, arguments left at their default are
    ignored, and an argument you changed that contradicts the config is a ``ValueError``. The Fabric
    ``precision`` fills the config's ``fp16``/``bf16`` section.

    Args:
        stage: ZeRO stage 0 (plain data parallel), 1, 2 or 3.
        offload_optimizer: keep optimizer states (and the fp32 master weights) in CPU memory; with a
            torch optimizer this sets ``"zero_force_ds_cpu_optimizer": false`` so DeepSpeed accepts it.
        offload_parameters: stage 3 only: keep the parameter partitions in CPU memory.
        remote_device: where ``init_module`` under stage 3 creates the partitions (``"cpu"``, ``"nvme"``).
        offload_params_device: ``"cpu"`` or ``"nvme"``.
        offload_optimizer_device: ``"cpu"`` or ``"nvme"``.
        nvme_path: the directory DeepSpeed swaps to when a device is ``"nvme"``.
        pin_memory: pin offloaded CPU memory (useful only with a GPU).
        contiguous_gradients: the ZeRO setting of the same name.
        overlap_comm: the ZeRO setting of the same name.
        allgather_partitions: the ZeRO setting of the same name.
        reduce_scatter: the ZeRO setting of the same name.
        allgather_bucket_size: the ZeRO setting of the same name.
        reduce_bucket_size: the ZeRO setting of the same name.
        sub_group_size: the ZeRO setting of the same name.
        loss_scale: float16 loss scaling (``loss_scale=0`` is dynamic).
        initial_scale_power: float16 loss scaling, DeepSpeed's setting of the same name.
        loss_scale_window: float16 loss scaling, DeepSpeed's setting of the same name.
        hysteresis: float16 loss scaling, DeepSpeed's setting of the same name.
        min_loss_scale: float16 loss scaling, DeepSpeed's setting of the same name.
        logging_batch_size_per_gpu: ``train_micro_batch_size_per_gpu`` for DeepSpeed's throughput logs.
        config: a complete DeepSpeed config (dict or path to a JSON file).
        logging_level: DeepSpeed's logger level.
        exclude_frozen_parameters: leave parameters without gradients out of checkpoints.
        timeout: as for :class:`~fabric.strategies.ddp.DDPStrategy`.
        start_method: as for :class:`~fabric.strategies.ddp.DDPStrategy`.
        process_group_backend: as for :class:`~fabric.strategies.ddp.DDPStrategy`.

    Gradient accumulation and clipping are DeepSpeed's: set ``gradient_accumulation_steps`` and
    ``gradient_clipping`` in ``config`` and call ``fabric.backward`` and ``optimizer.step()`` on every
    micro-batch (the engine steps at every N-th call).

    Example::

        strategy = DeepSpeedStrategy(stage=3, offload_optimizer=True, offload_parameters=True)
        fabric = Fabric(strategy=strategy, devices=2, precision="bf16-mixed")
    """

    module_wrapping = "wrapper"  # the DeepSpeed engine around the module

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        zero_optimization: bool = True,
        stage: int = 2,
        remote_device: str | None = None,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        offload_params_device: str = "cpu",
        nvme_path: str = _NVME_DEFAULT,
        params_buffer_count: int = 5,
        params_buffer_size: int = 100_000_000,
        max_in_cpu: int = 1_000_000_000,
        offload_optimizer_device: str = "cpu",
        optimizer_buffer_count: int = 4,
        pin_memory: bool = False,
        sub_group_size: int = 1_000_000_000_000,
        contiguous_gradients: bool = True,
        overlap_comm: bool = True,
        allgather_partitions: bool = True,
        reduce_scatter: bool = True,
        allgather_bucket_size: int = 200_000_000,
        reduce_bucket_size: int = 200_000_000,
        zero_allow_untested_optimizer: bool = True,
        logging_batch_size_per_gpu: int = 1,
        config: PathLike | dict[str, Any] | None = None,
        logging_level: int = logging.WARN,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        loss_scale: float = 0,
        initial_scale_power: int = 16,
        loss_scale_window: int = 1000,
        hysteresis: int = 2,
        min_loss_scale: int = 1,
        precision: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta = DEFAULT_TIMEOUT,
        start_method: str = "popen",
        exclude_frozen_parameters: bool = False,
    ) -> None:
        if not deepspeed_available():
            raise ModuleNotFoundError(
                f"DeepSpeedStrategy needs the `deepspeed` package, which is not installed. Install it with "
                f"`{_INSTALL_HINT}` (on a machine without CUDA: `DS_BUILD_OPS=0 {_INSTALL_HINT}`), or choose "
                f"another strategy such as 'fsdp' or 'ddp'."
            )
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            precision=None,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
        )
        if precision is not None:
            self.precision = precision
        arguments = dict(
            zero_optimization=zero_optimization,
            stage=stage,
            remote_device=remote_device,
            offload_optimizer=offload_optimizer,
            offload_parameters=offload_parameters,
            offload_params_device=offload_params_device,
            nvme_path=nvme_path,
            params_buffer_count=params_buffer_count,
            params_buffer_size=params_buffer_size,
            max_in_cpu=max_in_cpu,
            offload_optimizer_device=offload_optimizer_device,
            optimizer_buffer_count=optimizer_buffer_count,
            pin_memory=pin_memory,
            sub_group_size=sub_group_size,
            contiguous_gradients=contiguous_gradients,
            overlap_comm=overlap_comm,
            allgather_partitions=allgather_partitions,
            reduce_scatter=reduce_scatter,
            allgather_bucket_size=allgather_bucket_size,
            reduce_bucket_size=reduce_bucket_size,
            zero_allow_untested_optimizer=zero_allow_untested_optimizer,
            logging_batch_size_per_gpu=logging_batch_size_per_gpu,
            loss_scale=loss_scale,
            initial_scale_power=initial_scale_power,
            loss_scale_window=loss_scale_window,
            hysteresis=hysteresis,
            min_loss_scale=min_loss_scale,
        )
        check_arguments(arguments)
        user_config, defaults = read_config(config), _ARGUMENT_DEFAULTS()
        self.config: dict[str, Any] = merge_config(
            config_from_arguments(arguments), user_config, arguments, defaults
        )
        self._changed = {k for k, v in arguments.items() if v != defaults[k]} if user_config is None else None
        # float16 loss-scale settings: added to the config's "fp16" section only when float16 is used
        self._loss_scale: dict[str, Any] = self.config.pop("__loss_scale__", {})
        self.logging_level = logging_level
        self.remote_device = remote_device
        self.exclude_frozen_parameters = exclude_frozen_parameters
        # Weak: a model the user dropped (e.g. rebuilt to resume from a checkpoint) is not kept alive by us.
        self._engines: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._optimizer_engines: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._forwarded: dict[int, Any] = {}  # engines that ran forward since the last backward
        self._hooked: set[int] = set()
        self._forward_hooks_on = False

    # ----------------------------------------------------------------- precision
    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        """Accept the precision the connector resolved from the Fabric's ``precision`` string.

        DeepSpeed does mixed precision itself, so any plugin is replaced by the DeepSpeed plugin of the
        same name; an unsupported name fails here, before any process starts. The first assignment is
        the base class's plain default (``__init__`` passes none): it is kept as it is, so that the
        connector can still replace it (see :meth:`_deepspeed_precision`).
        """
        if "_precision" not in self.__dict__:
            self._precision = precision
            return
        if not isinstance(precision, DeepSpeedPrecision):
            if type(precision) not in _CONVERTIBLE_PRECISIONS:
                raise TypeError(
                    f"DeepSpeedStrategy cannot use the precision plugin {type(precision).__name__}: DeepSpeed does "
                    f"mixed precision itself. Pass Fabric(precision='32-true' | 'bf16-mixed' | '16-mixed' | "
                    f"'bf16-true' | '16-true') instead."
                )
            precision = DeepSpeedPrecision(precision.precision)
        self._precision = precision

    def _deepspeed_precision(self) -> DeepSpeedPrecision:
        # The default plain precision stays as it is until the connector had its say (it replaces only
        # a plain default); after that it is converted like any other.
        if not isinstance(self._precision, DeepSpeedPrecision):
            self.precision = self._precision
        assert isinstance(self._precision, DeepSpeedPrecision)
        return self._precision

    @property
    def zero_stage(self) -> int:
        section = self.config.get("zero_optimization") or {}
        return int(section.get("stage", 0)) if isinstance(section, Mapping) else 0

    def _engine_config(self) -> dict[str, Any]:
        """The config given to DeepSpeed: ours plus the precision's section (a contradiction is an error)."""
        return engine_config(self.config, self._deepspeed_precision(), self._loss_scale)

    # ---------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        if self.root_device.type == "cpu":
            # Without it DeepSpeed probes for accelerators and warns; the value only names the CPU backend.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self._deepspeed_precision()
        super().setup_environment()
        import deepspeed

        # DeepSpeed adopts the process group created above instead of starting its own.
        deepspeed.init_distributed(
            dist_backend=self.process_group_backend, auto_mpi_discovery=False, timeout=self._timeout
        )
        logging.getLogger("DeepSpeed").setLevel(self.logging_level)
        self._check_dtype_support()
        if self.root_device.type == "cpu" and self.zero_stage == 3:
            return_large_blocks_to_system()  # ZeRO-3 gathers and frees parameters every step, like FSDP
            add_cpu_zero3_sizes(self.config, self._changed)  # unless the user sized them (or gave a config)

    def _check_dtype_support(self) -> None:
        """DeepSpeed refuses a dtype its accelerator lacks only when the engine is built: say so up front."""
        from deepspeed.accelerator import get_accelerator

        precision = self._deepspeed_precision()
        accelerator = get_accelerator()
        dtype = precision.param_dtype
        supported = {
            torch.float16: accelerator.is_fp16_supported,
            torch.bfloat16: accelerator.is_bf16_supported,
        }.get(dtype)
        if supported is not None and not supported():
            other = "'bf16-mixed'" if dtype is torch.float16 else "'32-true'"
            raise ValueError(
                f"Fabric(precision={precision.precision!r}) with DeepSpeed: DeepSpeed's "
                f"{accelerator.device_name()} accelerator does not support {dtype} on this machine (on a CPU, "
                f"float16 needs oneDNN fp16 support, e.g. AVX512-FP16 or AMX-FP16). Use precision={other}."
            )

    def module_init_context(self, empty_init: bool | None = None) -> AbstractContextManager:
        """Under stage 3, ``empty_init=True`` (or ``None``) creates each parameter partitioned from the start.

        ``deepspeed.zero.Init`` runs every module's normal initialization, then keeps only this
        process's partition, so the model never exists whole in one process. ``empty_init=False``
        creates the whole model (partitioned at ``setup``).
        """
        if self.zero_stage != 3 or empty_init is False:
            return super().module_init_context(empty_init=empty_init)
        import deepspeed

        stack = ExitStack()
        stack.enter_context(self.precision.module_init_context())
        stack.enter_context(
            deepspeed.zero.Init(
                config_dict_or_path=self._engine_config(),
                remote_device=self.remote_device,
                pin_memory=bool(self.config["zero_optimization"].get("offload_param", {}).get("pin_memory")),
            )
        )
        return stack

    def module_to_device(self, module: Module) -> None:
        if _is_partitioned(module):
            return  # zero.Init placed the partitions already
        module.to(self.root_device)

    def setup_module_and_optimizers(
        self, module: Module, optimizers: list[Optimizer]
    ) -> tuple[Module, list[Any]]:
        """Build the DeepSpeed engine of ``module`` and its optimizer; return the engine and DeepSpeed's optimizer.

        One engine holds one model and at most one optimizer. When the config names an optimizer
        (``"optimizer": {"type": "Adam", ...}``) DeepSpeed creates it (e.g. its CPU Adam under
        offload), and ``fabric.setup(model)`` returns ``(model, optimizer)``.
        """
        if len(optimizers) > 1:
            raise ValueError(
                f"DeepSpeedStrategy: fabric.setup() got {len(optimizers)} optimizers; a DeepSpeed engine drives one "
                f"model and one optimizer. Combine the parameter groups into one optimizer, or set up each model "
                f"with its own optimizer in separate `fabric.setup(model, optimizer)` calls."
            )
        optimizer = optimizers[0] if optimizers else None
        if optimizer is not None and "optimizer" in self.config:
            raise ValueError(
                f"DeepSpeedStrategy: the config names an optimizer ({self.config['optimizer'].get('type')!r}) and "
                f"fabric.setup() got a {type(optimizer).__name__} too. Either remove 'optimizer' from the config, "
                f"or call `model, optimizer = fabric.setup(model)` and DeepSpeed creates it."
            )
        if id(module) in self._engines:
            raise ValueError("DeepSpeedStrategy: this model was already set up; set it up once.")
        import deepspeed

        config = self._engine_config()
        if optimizer is not None and offloads_optimizer(config):
            # DeepSpeed refuses a torch optimizer under offload unless told that it is meant.
            config.setdefault("zero_force_ds_cpu_optimizer", False)
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            model_parameters=None
            if optimizer is not None
            else [p for p in module.parameters() if p.requires_grad],
            config=config,
            dist_init_required=False,
        )
        self._engines[id(module)] = engine
        if len(self._engines) > 1 or self._forward_hooks_on:
            # Only with several engines must `backward` tell which one ran; one engine costs no hook.
            for other in self._engines.values():
                if id(other) not in self._hooked:
                    other.register_forward_pre_hook(self._note_forward)
                    self._hooked.add(id(other))
            self._forward_hooks_on = True
        if ds_optimizer is None:
            return engine, []
        self._optimizer_engines[id(ds_optimizer)] = engine
        return engine, [ds_optimizer]

    def setup_module(self, module: Module) -> Module:
        """A model without optimizer: an engine for inference (no optimizer may be set up for it later)."""
        engine, optimizers = self.setup_module_and_optimizers(module, [])
        if optimizers:
            raise ValueError(
                "DeepSpeedStrategy: the config names an optimizer; set the model up with `model, optimizer = "
                "fabric.setup(model)` to receive it."
            )
        return engine

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        raise NotImplementedError(
            "DeepSpeedStrategy builds the model and its optimizer together into one engine: call "
            "`model, optimizer = fabric.setup(model, optimizer)` instead of `setup_module` + `setup_optimizers`."
        )

    # ---------------------------------------------------------------------- steps
    def _engine_for_backward(self, module: Module | None) -> Any:
        if module is not None:
            if _is_engine(module):
                return module
            engine = self._engines.get(id(module))
            if engine is not None:
                return engine
            raise ValueError(
                f"fabric.backward(loss, model=...): the model ({type(module).__name__}) was not set up by this "
                f"DeepSpeedStrategy. Pass the model returned by `fabric.setup`."
            )
        if len(self._engines) == 1:
            return next(iter(self._engines.values()))
        if not self._engines:
            raise RuntimeError(
                "fabric.backward(): no model was set up. Call `fabric.setup(model, optimizer)` first; the DeepSpeed "
                "engine runs the backward pass."
            )
        if len(self._forwarded) == 1:
            # Several engines exist (e.g. a model rebuilt to resume), but only one ran since the last backward.
            return next(iter(self._forwarded.values()))
        raise ValueError(
            f"fabric.backward(loss): {len(self._engines)} DeepSpeed models are set up and "
            f"{len(self._forwarded)} of them ran since the last backward; say which one the loss belongs to: "
            f"`fabric.backward(loss, model=model)`."
        )

    def backward(self, tensor: Tensor, module: Module | None, *args: Any, **kwargs: Any) -> None:
        """The engine's backward: scales the loss (fp16, accumulation) and reduces gradients as ZeRO needs."""
        engine = self._engine_for_backward(module)
        self._forwarded.clear()
        engine.backward(tensor, *args, **kwargs)

    def _note_forward(self, engine: Module, args: Any) -> None:
        self._forwarded[id(engine)] = engine

    def optimizer_step(self, optimizer: Any, **kwargs: Any) -> Any:
        """The engine's step: unscales, clips (``gradient_clipping``), steps at the accumulation boundary, zeroes."""
        engine = self._optimizer_engines.get(id(optimizer))
        if engine is None:
            raise ValueError(
                f"DeepSpeedStrategy: {type(optimizer).__name__} is not the optimizer of a DeepSpeed engine. Use the "
                f"optimizer returned by `fabric.setup(model, optimizer)`."
            )
        if kwargs.get("closure") is not None:
            raise TypeError(
                "DeepSpeedStrategy: optimizer.step(closure) is not supported; the engine runs backward and step "
                "itself. Call `fabric.backward(loss)` and then `optimizer.step()`."
            )
        return engine.step()

    def no_backward_sync(self, module: Module, enabled: bool) -> AbstractContextManager:
        if not enabled:
            return nullcontext()
        raise NotImplementedError(
            "DeepSpeedStrategy: no_backward_sync is not supported; DeepSpeed accumulates gradients itself. Set "
            "`gradient_accumulation_steps` in the DeepSpeed config (DeepSpeedStrategy(config={..., "
            "'gradient_accumulation_steps': N})), remove `fabric.no_backward_sync`, and call `fabric.backward(loss)` "
            "and `optimizer.step()` on every micro-batch: the engine steps the optimizer on every N-th call."
        )

    def clip_gradients_norm(
        self,
        module: Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor:
        raise NotImplementedError(
            f"DeepSpeedStrategy: fabric.clip_gradients(max_norm={max_norm}) is not supported; DeepSpeed clips inside "
            f"its optimizer step. Set it in the config instead: DeepSpeedStrategy(config={{..., "
            f"'gradient_clipping': {max_norm}}}), and remove the `fabric.clip_gradients` call."
        )

    def clip_gradients_value(self, module: Module, optimizer: Optimizer, clip_val: float) -> None:
        raise NotImplementedError(
            f"DeepSpeedStrategy: fabric.clip_gradients(clip_val={clip_val}) is not supported; DeepSpeed clips only "
            f"by norm, inside its optimizer step. Set 'gradient_clipping' (a max norm) in the DeepSpeed config and "
            f"remove the `fabric.clip_gradients` call."
        )

    # ---------------------------------------------------------------- checkpoints
    def get_module_state_dict(self, module: Module) -> dict[str, Any]:
        """The full state dict of ``module`` on every process (stage 3 gathers the partitions first)."""
        if _is_engine(module):
            module = module.module  # type: ignore[assignment]
        if not _is_partitioned(module):
            return module.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def load_module_state_dict(self, module: Module, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Load a full state dict; under ZeRO the optimizer's fp32 master copy is refreshed from it."""
        engine = self._engines.get(id(module))
        target = engine.module if engine is not None else module
        if _is_partitioned(target):
            import deepspeed

            # Every process holds the full file: each loads it into the gathered parameters and keeps
            # its own partition when the context ends.
            with deepspeed.zero.GatheredParameters(list(target.parameters()), modifier_rank=0):
                if self.is_global_zero:
                    target.load_state_dict(state_dict, strict=strict)
                else:
                    _check_keys(target, state_dict, strict)
        else:
            target.load_state_dict(state_dict, strict=strict)
        optimizer = getattr(engine, "optimizer", None) if engine is not None else None
        refresh = getattr(optimizer, "refresh_fp32_params", None)
        if callable(refresh):
            refresh()

    @property
    def checkpoint_layout(self) -> LayoutName:
        """DeepSpeed's own directory, written by the engine (:mod:`fabric.checkpoint.deepspeed_layout`)."""
        return "deepspeed"

    def is_engine_optimizer(self, obj: Any) -> bool:
        """Whether ``obj`` is an optimizer one of this strategy's engines drives."""
        return id(obj) in self._optimizer_engines

    def split_engine_state(self, state: Mapping[str, Any]) -> tuple[Any, str, str | None, dict[str, Any]]:
        """The one engine in ``state``, the keys of its model and optimizer, and everything else."""
        module_keys = [k for k, v in state.items() if id(v) in self._engines or _is_engine(v)]
        optimizer_keys = [k for k, v in state.items() if id(v) in self._optimizer_engines]
        if len(module_keys) != 1:
            raise ValueError(
                f"DeepSpeedStrategy: `state` must hold exactly one model set up with DeepSpeed to save or load a "
                f"checkpoint; it holds {len(module_keys)} ({module_keys}). Save each model to its own path."
            )
        module = state[module_keys[0]]
        engine = module if _is_engine(module) else self._engines[id(module)]
        optimizer_key = None
        for key in optimizer_keys:
            if self._optimizer_engines[id(state[key])] is not engine:
                raise ValueError(
                    f"DeepSpeedStrategy: the optimizer `{key}` belongs to another model than `{module_keys[0]}`; "
                    f"save each model with its own optimizer."
                )
            optimizer_key = key
        others = [k for k, v in state.items() if isinstance(v, (Module, Optimizer)) and k not in module_keys]
        others = [k for k in others if k != optimizer_key]
        if others:
            raise ValueError(
                f"DeepSpeedStrategy: `state` holds {others}, models or optimizers not set up with this DeepSpeed "
                f"engine. Save them separately, or set them up with `fabric.setup`."
            )
        rest = {k: v for k, v in state.items() if k not in module_keys and k != optimizer_key}
        return engine, module_keys[0], optimizer_key, rest

    def load_raw(
        self,
        path: PathLike,
        obj: Module | Optimizer,
        strict: bool = True,
        weights_only: bool = True,
        owner: Module | None = None,
    ) -> None:
        if isinstance(obj, Module):
            super().load_raw(path, obj, strict=strict, weights_only=weights_only)
            return
        raise NotImplementedError(
            "DeepSpeedStrategy: load_raw of an optimizer is not supported (ZeRO partitions its state); resume the "
            "optimizer from a DeepSpeed checkpoint directory with `fabric.load`."
        )


_CONVERTIBLE_PRECISIONS = (Precision, MixedPrecision, TruePrecision)


def _ARGUMENT_DEFAULTS() -> dict[str, Any]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(DeepSpeedStrategy.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _is_engine(module: Any) -> bool:
    # DeepSpeedEngine is identified by class name: importing deepspeed only to check would cost seconds.
    return any(cls.__name__ == "DeepSpeedEngine" for cls in type(module).__mro__)


def _is_partitioned(module: Module) -> bool:
    """Whether ZeRO-3 partitioned the parameters of ``module`` (they carry a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _check_keys(module: Module, state_dict: dict[str, Any], strict: bool) -> None:
    if not strict:
        return
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(module).__name__}: Missing key(s): {missing}; unexpected "
            f"key(s): {unexpected}. Pass strict=False to skip them."
        )


__all__ = [
    "DeepSpeedStrategy",
    "consolidate_deepspeed",
    "deepspeed_available",
    "is_deepspeed_checkpoint",
    "resolve_deepspeed_checkpoint",
]
