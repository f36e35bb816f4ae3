"""Lightning behaviour that Lightning's own Fabric tests check and fabric now has (issue 20).

Each test pins one observable behaviour of a Lightning name: the data-parallel strategy, FSDP's
precision plugin, the single-device collective, the deprecated TPU names, the CUDA helpers and the
small utilities. The full comparison runs with ``benchmarks/lightning_suite/run.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from fabric import Fabric


# ------------------------------------------------------------------------------------- strategy="dp"
def test_dp_is_one_process_that_wraps_the_model_in_data_parallel() -> None:
    from fabric.strategies import DataParallelStrategy, ParallelStrategy

    fabric = Fabric(accelerator="cpu", devices=2, strategy="dp")
    strategy = fabric.strategy
    assert isinstance(strategy, DataParallelStrategy) and isinstance(strategy, ParallelStrategy)
    assert (fabric.world_size, fabric.global_rank, fabric.local_rank, fabric.node_rank) == (1, 0, 0, 0)
    assert strategy.launcher is None and strategy.distributed_sampler_kwargs is None
    assert strategy.root_device == torch.device("cpu")
    fabric.launch()
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped, optimizer = fabric.setup(model, optimizer)
    assert isinstance(wrapped._forward_module, nn.DataParallel)
    before = model.weight.detach().clone()
    fabric.backward(wrapped(torch.randn(4, 3)).sum())
    optimizer.step()
    assert not torch.equal(before, model.weight)
    # the checkpoint holds the plain module's keys, without DataParallel's "module." prefix
    assert strategy.get_module_state_dict(wrapped._forward_module).keys() == model.state_dict().keys()
    batch = torch.randn(4, 3)
    assert strategy.batch_to_device(batch) is batch  # DataParallel scatters the batch itself
    # all_reduce averages what DataParallel gathered, and keeps the dtype
    assert strategy.all_reduce(torch.tensor([1, 2, 3, 6])).item() == 3
    assert strategy.broadcast("x") == "x" and strategy.reduce_boolean_decision(False) is False


def test_dp_outside_fabric_as_lightning_tests_build_it() -> None:
    from fabric.strategies.dp import DataParallelStrategy

    strategy = DataParallelStrategy()
    strategy.parallel_devices = [torch.device("cpu", 2), torch.device("cpu", 0)]
    assert strategy.root_device == torch.device("cpu", 2)
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.is_global_zero) == (
        1,
        0,
        0,
        True,
    )
    with pytest.raises(ValueError, match="'dp' runs in one process on one machine"):
        strategy.configure(parallel_devices=[torch.device("cpu")], num_nodes=2, environment=None)


# ---------------------------------------------------------------------------------------- FSDPPrecision
@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("32-true", torch.float32),
        ("16-true", torch.float16),
        ("bf16-true", torch.bfloat16),
        ("bf16-mixed", torch.bfloat16),
    ],
)
def test_fsdp_precision_maps_onto_fsdp2_policy_and_keeps_lightning_config(
    precision: str, dtype: torch.dtype
) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from fabric.plugins.precision import FSDPPrecision

    plugin = FSDPPrecision(precision)
    policy = plugin.mixed_precision_policy
    assert isinstance(policy, MixedPrecisionPolicy)
    assert policy.param_dtype == policy.reduce_dtype == dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the '-true' precisions warn about FSDP's full-precision copy
        config = plugin.mixed_precision_config
    assert config.param_dtype == config.reduce_dtype == config.buffer_dtype == dtype
    module = plugin.convert_module(nn.Linear(2, 2))
    assert module.weight.dtype == (dtype if precision.endswith("-true") else torch.float32)
    with plugin.module_init_context():
        assert torch.get_default_dtype() == (dtype if precision.endswith("-true") else torch.float32)
    assert torch.get_default_dtype() == torch.float32


def test_fsdp_precision_scaler_and_errors() -> None:
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from fabric.plugins.precision import FSDPPrecision

    assert isinstance(FSDPPrecision("16-mixed").scaler, ShardedGradScaler)
    assert FSDPPrecision("bf16-mixed").scaler is None
    with pytest.raises(ValueError, match="is not supported in FSDP"):
        FSDPPrecision("64-true")
    with pytest.raises(ValueError, match="does not use a scaler"):
        FSDPPrecision("bf16-mixed", scaler=ShardedGradScaler("cpu"))
    plugin = FSDPPrecision("bf16-mixed")
    with plugin.forward_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# --------------------------------------------------------------------------------- SingleDeviceCollective
def test_single_device_collective_is_the_identity() -> None:
    from fabric.plugins.collectives import Collective, SingleDeviceCollective, TorchCollective

    collective = SingleDeviceCollective()
    assert isinstance(collective, Collective) and issubclass(TorchCollective, Collective)
    assert collective.is_initialized() and (collective.rank, collective.world_size) == (0, 1)
    with pytest.raises(RuntimeError, match="`SingleDeviceCollective` does not own a group"):
        _ = collective.group
    collective.create_group()
    tensor = torch.ones(2)
    assert collective.all_reduce(tensor) is tensor and collective.broadcast(tensor, 0) is tensor
    assert collective.all_gather([], tensor) == [tensor]
    assert collective.scatter(tensor, [tensor * 2]).sum() == 4
    collective.teardown()
    with pytest.raises(RuntimeError, match="does not own a group"):
        collective.teardown()


# ----------------------------------------------------------------------------------- deprecated TPU names
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("fabric.accelerators", "TPUAccelerator"),
        ("fabric.accelerators.tpu", "TPUAccelerator"),
        ("fabric.plugins", "TPUPrecision"),
        ("fabric.plugins.precision.tpu_bf16", "TPUBf16Precision"),
        ("fabric.plugins.precision.xlabf16", "XLABf16Precision"),
        ("fabric.strategies.single_tpu", "SingleTPUStrategy"),
    ],
)
def test_removed_tpu_names_warn_and_need_torch_xla(path: str, name: str) -> None:
    import importlib

    from fabric.accelerators.xla import torch_xla_installed

    if torch_xla_installed():
        pytest.skip("checks the error without torch-xla")
    cls = getattr(importlib.import_module(path), name)
    with pytest.deprecated_call(match="is deprecated"), pytest.raises(ModuleNotFoundError, match="torch_xla"):
        cls()


# ------------------------------------------------------------------------------------- CUDA helpers
def test_cuda_helpers_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from fabric.accelerators import CUDAAccelerator, cuda, find_usable_cuda_devices

    assert find_usable_cuda_devices(0) == []
    monkeypatch.setattr(cuda, "num_cuda_devices", lambda: 0)
    assert CUDAAccelerator.auto_device_count() == 0 and not CUDAAccelerator.is_available()
    with pytest.raises(ValueError, match="no visible CUDA devices"):
        find_usable_cuda_devices(1)
    monkeypatch.setattr(cuda, "num_cuda_devices", lambda: 2)  # what Lightning's tests patch
    assert CUDAAccelerator.auto_device_count() == 2
    with pytest.raises(ValueError, match="only has 2 GPUs"):
        find_usable_cuda_devices(3)


# ------------------------------------------------------------------------------------------ utilities
def test_small_lightning_utilities() -> None:
    from fabric.loggers.logger import rank_zero_experiment
    from fabric.utilities import rank_zero
    from fabric.utilities.data import AttributeDict, sized_len
    from fabric.utilities.exceptions import MisconfigurationException
    from fabric.utilities.types import CollectibleGroup, Steppable

    assert sized_len([1, 2]) == 2 and sized_len(iter([1])) is None
    assert AttributeDict(a=1).a == 1 and issubclass(MisconfigurationException, Exception)
    assert isinstance(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1), Steppable)
    assert CollectibleGroup is torch.distributed.ProcessGroup
    assert issubclass(rank_zero.LightningDeprecationWarning, DeprecationWarning)

    class Logger:
        @property
        @rank_zero_experiment
        def experiment(self) -> str:
            return "real"

    assert Logger().experiment == "real"
    previous = rank_zero.global_rank()
    rank_zero.set_global_rank(1)
    try:
        assert Logger().experiment.add_scalar("x", 1) is None  # a no-op object off rank 0
    finally:
        rank_zero.set_global_rank(previous)


# ------------------------------------------------------------------- strategies outside Fabric
def test_parallel_strategy_built_outside_fabric_is_rank_zero_of_one() -> None:
    from fabric.plugins.environments import LightningEnvironment
    from fabric.strategies import DDPStrategy

    strategy = DDPStrategy(parallel_devices=[torch.device("cpu"), torch.device("cpu")])
    assert (strategy.world_size, strategy.global_rank, strategy.local_rank, strategy.node_rank) == (
        1,
        0,
        0,
        0,
    )
    assert strategy.is_global_zero and strategy.root_device == torch.device("cpu")
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 1, "rank": 0}
    strategy.cluster_environment = LightningEnvironment()
    strategy.cluster_environment.set_world_size(2)
    strategy.cluster_environment.set_global_rank(1)
    assert (strategy.world_size, strategy.global_rank) == (2, 1)


def test_loggers_and_checkpoint_hooks_are_called_with_lightnings_keywords(tmp_path: Any) -> None:
    from fabric.strategies import SingleDeviceStrategy

    class KeywordLogger:  # keyword-only parameters: a positional call would raise
        def __init__(self) -> None:
            self.calls: list[tuple[dict, Any]] = []

        def log_metrics(self, *, metrics: dict, step: Any = None) -> None:
            self.calls.append((metrics, step))

        def log_hyperparams(self, params: Any) -> None: ...

        def save(self) -> None: ...

        def finalize(self, status: str) -> None: ...

    class KeywordStrategy(SingleDeviceStrategy):
        def save_checkpoint(self, *, path: Any, state: dict, **kwargs: Any) -> None:  # type: ignore[override]
            super().save_checkpoint(path, state, **kwargs)

        def load_checkpoint(self, *, path: Any, state: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
            return super().load_checkpoint(path, state, **kwargs)

    from fabric.plugins.io import TorchCheckpointIO

    class KeywordIO(TorchCheckpointIO):
        def save_checkpoint(self, *, checkpoint: dict, path: Any, storage_options: Any = None) -> None:  # type: ignore[override]
            self.saved = path
            super().save_checkpoint(checkpoint, path, storage_options)

    logger = KeywordLogger()
    strategy = KeywordStrategy(device=torch.device("cpu"))
    strategy.checkpoint_io = KeywordIO()
    fabric = Fabric(strategy=strategy, loggers=logger)
    fabric.log("loss", torch.tensor(2.0), step=3)
    assert logger.calls == [({"loss": 2.0}, 3)]
    fabric.save(tmp_path / "ckpt.pt", {"step": 7})
    assert strategy.checkpoint_io.saved  # type: ignore[attr-defined]  # the plugin wrote it, called by keyword
    assert fabric.load(tmp_path / "ckpt.pt")["step"] == 7


def test_local_environment_takes_group_rank_for_the_node_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from fabric.plugins.environments import LightningEnvironment

    monkeypatch.delenv("NODE_RANK", raising=False)
    monkeypatch.setenv("GROUP_RANK", "1")
    assert LightningEnvironment().node_rank() == 1
    monkeypatch.setenv("NODE_RANK", "2")
    assert LightningEnvironment().node_rank() == 2


# ------------------------------------------------------------------------- deliberate differences (FSDP)
def test_hybrid_shard_needs_no_wrap_policy_or_process_group() -> None:
    """Lightning refuses ``HYBRID_SHARD`` without ``auto_wrap_policy``/``process_group``/``device_mesh`` (an
    FSDP1 limit: manual wrapping then has no process groups). FSDP2 here always wraps with a policy and
    builds the 2-D mesh itself, by default ``(num_nodes, devices)``, so the plain call works."""
    from fabric.strategies import FSDPStrategy

    for name in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
        strategy = FSDPStrategy(sharding_strategy=name)
        assert strategy.sharding_strategy.name == name
    assert FSDPStrategy(sharding_strategy="_HYBRID_SHARD_ZERO2").reshard_after_forward is False


def test_fsdp_sharding_strategy_is_torchs_enum_as_in_lightning() -> None:
    from torch.distributed.fsdp import ShardingStrategy

    from fabric.strategies import FSDPStrategy

    assert FSDPStrategy().sharding_strategy == ShardingStrategy.FULL_SHARD
    assert FSDPStrategy(sharding_strategy=ShardingStrategy.SHARD_GRAD_OP).sharding_strategy == (
        ShardingStrategy.SHARD_GRAD_OP
    )
    assert FSDPStrategy(sharding_strategy="NO_SHARD").sharding_strategy == ShardingStrategy.NO_SHARD


def test_fsdp_load_without_state_returns_the_checkpoint(tmp_path: Any) -> None:
    """Lightning's ``FSDPStrategy.load_checkpoint(path, state=None)`` raises; ours returns what the file holds
    (the README's "`fabric.load(path)` returns everything"), also for an FSDP strategy built outside Fabric."""
    from fabric.strategies import FSDPStrategy

    torch.save({"step": 3, "w": torch.ones(2)}, tmp_path / "plain.pt")
    loaded = FSDPStrategy().load_checkpoint(tmp_path / "plain.pt", state=None)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.ones(2))


def test_fsdp_cpu_offload_is_fsdp1s_dataclass_as_in_lightning() -> None:
    from torch.distributed.fsdp import CPUOffload

    from fabric.strategies import FSDPStrategy

    assert FSDPStrategy(cpu_offload=True).cpu_offload == CPUOffload(offload_params=True)
    assert FSDPStrategy(cpu_offload=CPUOffload()).cpu_offload == CPUOffload()
    assert FSDPStrategy().cpu_offload == CPUOffload(offload_params=False)
