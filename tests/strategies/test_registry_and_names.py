"""Lightning's names for strategies, accelerators and plugins: registries, lazy subpackages, start methods."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fabric
from fabric import Fabric
from fabric.accelerators import ACCELERATOR_REGISTRY, CPUAccelerator
from tests.strategies.multiprocess import SCRIPTS, launch_env, run_python


def test_strategy_registry_registers_builds_and_refuses_duplicates() -> None:
    from fabric.strategies import STRATEGY_REGISTRY, DDPStrategy

    assert {"ddp", "ddp_spawn", "fsdp", "ddp_notebook_find_unused_parameters_true"} <= set(
        STRATEGY_REGISTRY.available_strategies()
    )
    STRATEGY_REGISTRY.register("ddp_static_test", DDPStrategy, description="static", static_graph=True)
    try:
        with pytest.raises(ValueError, match="override=True"):
            STRATEGY_REGISTRY.register("ddp_static_test", DDPStrategy)
        entry = STRATEGY_REGISTRY["ddp_static_test"]
        assert entry["strategy"] is DDPStrategy and entry["description"] == "static"
        built = Fabric(accelerator="cpu", strategy="ddp_static_test", devices=2).strategy
        assert isinstance(built, DDPStrategy) and built._ddp_kwargs == {"static_graph": True}
    finally:
        STRATEGY_REGISTRY.remove("ddp_static_test")
    with pytest.raises(KeyError, match="Available names"):
        STRATEGY_REGISTRY.get("ddp_static_test")


def test_accelerator_registry_accepts_a_users_class_as_decorator() -> None:
    @ACCELERATOR_REGISTRY.register("my_cpu_test", description="a CPU by another name")
    class MyCPU(CPUAccelerator):
        pass

    try:
        assert "my_cpu_test" in ACCELERATOR_REGISTRY.available_accelerators()
        assert type(Fabric(accelerator="my_cpu_test", devices=1).accelerator) is MyCPU
    finally:
        ACCELERATOR_REGISTRY.remove("my_cpu_test")


def test_lightning_start_methods_and_a_clear_error_otherwise() -> None:
    from fabric.strategies import DDPStrategy, ParallelStrategy

    for method in ("popen", "spawn", "fork", "forkserver"):
        assert isinstance(DDPStrategy(start_method=method), ParallelStrategy)
    with pytest.raises(ValueError, match="forkserver"):
        DDPStrategy(start_method="thread")
    with pytest.raises(ValueError, match="fabric.save"):
        DDPStrategy(checkpoint_io=object())


@pytest.mark.timeout(120)
def test_forkserver_trains_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    run = run_python([str(SCRIPTS / "forkserver_fn.py"), str(out)], timeout=110)
    assert run.returncode == 0, run.output
    assert json.loads(out.read_text()) == {"world_size": 2, "identical": True}


def test_subpackages_are_attributes_and_import_stays_light() -> None:
    code = (
        "import sys, fabric; heavy = [m for m in sys.modules if m.startswith(('torch.distributed.fsdp', "
        "'torch.distributed.checkpoint', 'torch._dynamo', 'fabric.plugins', 'fabric.strategies.fsdp'))]; "
        "assert not heavy, heavy; "
        "from fabric.strategies.fsdp import FSDPStrategy; "
        "assert fabric.strategies.fsdp.FSDPStrategy is FSDPStrategy; "
        "assert fabric.plugins.collectives.TorchCollective; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=launch_env(), capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_plugins_names_and_what_to_use_instead() -> None:
    from fabric.environments import LocalEnvironment
    from fabric.plugins import ClusterEnvironment, Precision
    from fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    assert LightningEnvironment is LocalEnvironment
    assert issubclass(SLURMEnvironment, ClusterEnvironment)
    assert Precision is fabric.precision.Precision
    with pytest.raises(AttributeError, match="precision="):
        fabric.plugins.FSDPPrecision  # noqa: B018
    # Lightning's storage plugin interface
    assert fabric.plugins.CheckpointIO is fabric.checkpoint.CheckpointIO
    assert fabric.plugins.io.TorchCheckpointIO is fabric.checkpoint.TorchCheckpointIO
    with pytest.raises(AttributeError, match="fabric.save"):
        fabric.plugins.XLACheckpointIO  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fabric.plugins.precision.Nope  # noqa: B018
