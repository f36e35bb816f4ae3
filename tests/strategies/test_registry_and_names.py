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
    assert fabric.plugins.FSDPPrecision is fabric.precision.fsdp.FSDPPrecision
    # Lightning's storage plugin interface
    assert fabric.plugins.CheckpointIO is fabric.checkpoint.CheckpointIO
    assert fabric.plugins.io.TorchCheckpointIO is fabric.checkpoint.TorchCheckpointIO
    # engines fabric drives differently: the name imports, constructing it says what to use instead
    with pytest.raises(TypeError, match="fabric.save"):
        fabric.plugins.XLACheckpointIO()
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fabric.plugins.precision.Nope  # noqa: B018


# ----------------------------------------------------------------------------------- start-up imports
# What a DDP run must not import: every process of a run pays for each module at start-up, and the
# subprocess launcher's processes start one after the other.
_NOT_FOR_DDP = (
    "fabric.strategies.fsdp",
    "fabric.strategies._deferred_init",
    "fabric.strategies.model_parallel",
    "fabric.strategies.deepspeed",
    "fabric.strategies.xla",
    "fabric.checkpoint",
    "fabric.loggers.csv",
    "fabric.loggers.tensorboard",
    "fabric.launchers.direct",
    "torch.distributed.fsdp",
    "torch.distributed.checkpoint",
    "torch.distributed.tensor",
    "torch.distributed._tensor",
    "torch._dynamo",
    "deepspeed",
    "torch_xla",
)


def _modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after ``code`` (no launcher variables in its environment)."""
    probe = f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=launch_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(70)
@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "auto"])
def test_constructing_a_ddp_fabric_imports_no_other_strategy_and_no_checkpoint_code(strategy: str) -> None:
    modules = _modules_after(
        f"from fabric import Fabric\n"
        f"fabric = Fabric(accelerator='cpu', strategy={strategy!r}, devices=2)\n"
        f"assert type(fabric.strategy).__name__ == 'DDPStrategy'"
    )
    assert "fabric.strategies.ddp" in modules  # the probe did build the strategy
    heavy = [name for name in modules if name.startswith(_NOT_FOR_DDP)]
    assert heavy == [], heavy


def test_every_built_in_strategy_name_resolves_to_its_class_only_when_read() -> None:
    modules = _modules_after("from fabric.strategies.registry import STRATEGY_REGISTRY")
    # the package's own base classes only: no strategy module is imported before a name is read
    loaded = {name for name in modules if name.startswith("fabric.strategies.")}
    assert loaded == {
        "fabric.strategies.registry",
        "fabric.strategies.single_device",
        "fabric.strategies.strategy",
    }

    from fabric.strategies import (
        STRATEGY_REGISTRY,
        DataParallelStrategy,
        DDPStrategy,
        DeepSpeedStrategy,
        FSDPStrategy,
        SingleXLAStrategy,
        Strategy,
        XLAFSDPStrategy,
        XLAStrategy,
    )
    from fabric.strategies.registry import STRATEGY_NAMES
    from fabric.strategies.single_tpu import SingleTPUStrategy
    from fabric.utilities.choices import STRATEGY_NAMES as CLI_STRATEGY_NAMES

    expected = {
        "ddp": DDPStrategy,
        "dp": DataParallelStrategy,
        "fsdp": FSDPStrategy,
        "deepspeed": DeepSpeedStrategy,
        "single_xla": SingleXLAStrategy,
        "single_tpu": SingleTPUStrategy,
        "xla": XLAStrategy,
        "xla_fsdp": XLAFSDPStrategy,
    }
    assert tuple(STRATEGY_REGISTRY) == CLI_STRATEGY_NAMES == tuple(STRATEGY_NAMES)
    for name in CLI_STRATEGY_NAMES:
        entry = STRATEGY_REGISTRY[name]
        assert isinstance(entry["strategy"], type) and issubclass(entry["strategy"], Strategy), name
        assert entry["strategy_name"] == name and entry["init_params"] == STRATEGY_NAMES[name]["init"]
        family = next(prefix for prefix in sorted(expected, key=len, reverse=True) if name.startswith(prefix))
        assert entry["strategy"] is expected[family], name
    assert all(isinstance(entry["strategy"], type) for entry in STRATEGY_REGISTRY.values())
    assert dict(STRATEGY_REGISTRY.items())["fsdp_cpu_offload"]["init_params"] == {"cpu_offload": True}
    built = STRATEGY_REGISTRY.get("ddp_fork_find_unused_parameters_true")
    assert type(built) is DDPStrategy and built.start_method == "fork"


def test_a_lazy_registration_names_a_bad_path() -> None:
    from fabric.utilities.registry import StrategyRegistry

    registry = StrategyRegistry()
    with pytest.raises(ValueError, match="'package.module:ClassName'"):
        registry.register_lazy("mine", "fabric.strategies.ddp.DDPStrategy")
    registry.register_lazy("mine", "fabric.strategies.ddp:NoSuchStrategy")
    with pytest.raises(AttributeError, match="NoSuchStrategy"):
        registry.get("mine")
