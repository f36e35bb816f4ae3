"""Resolving Fabric's arguments (and the `fabric run` environment variables) into parts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fabric import Fabric
from fabric.accelerators import CPUAccelerator
from fabric.precision import MixedPrecision, Precision, TruePrecision
from fabric.strategies import SingleDeviceStrategy


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"accelerator": "tpu9"}, ValueError, "accelerator='tpu9'.*Allowed"),
        ({"accelerator": "cuda"}, RuntimeError, "cuda is not available"),
        ({"accelerator": "gpu"}, RuntimeError, "no GPU is available"),
        ({"precision": "8-true"}, ValueError, r"precision='8-true'\) is not supported"),
        ({"precision": "bf16-mixed", "plugins": TruePrecision("bf16-true")}, ValueError, "given twice"),
        ({"plugins": [object()]}, TypeError, "must be a Precision, a ClusterEnvironment or a CheckpointIO"),
        ({"strategy": "nonsense"}, ValueError, r"strategy='nonsense'\) is not a known strategy"),
        ({"strategy": 3}, TypeError, "pass a strategy name"),
        ({"num_nodes": 0}, ValueError, r"num_nodes=0\): num_nodes is the number of machines, an int >= 1"),
        # issue 19 #11: a bare `int()` error before, not naming the argument
        ({"num_nodes": "x"}, ValueError, r"Fabric\(num_nodes='x'\): .* an int >= 1 \(e.g. num_nodes=2\)"),
        ({"num_nodes": 1.5}, ValueError, r"Fabric\(num_nodes=1.5\)"),
        (
            {"devices": [0, 1]},
            TypeError,
            r"devices=\[0, 1\]\): a list selects devices by index, and CPUs have none",
        ),
        ({"devices": [0]}, TypeError, r"devices=\[0\]\): .*an int >= 1, -1 or 'auto'.*Pass devices=1"),
        # issue 19 #11: Lightning accepts these and never calls them
        ({"callbacks": 5}, TypeError, r"Fabric\(callbacks=5\): 5 is int, not a callback"),
        ({"callbacks": [object(), None]}, TypeError, "None is NoneType, not a callback"),
        ({"callbacks": [object]}, TypeError, r"is a class \(pass an instance\)"),
        ({"strategy": "single_device", "devices": 2}, ValueError, "cannot use 2 devices"),
    ],
)
def test_invalid_arguments_fail_before_any_work(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    if torch.cuda.is_available() and kwargs.get("accelerator") in ("cuda", "gpu"):
        pytest.skip("this machine has a GPU")
    kwargs.setdefault("accelerator", "cpu")
    with pytest.raises(error, match=match):
        Fabric(**kwargs)


@pytest.mark.parametrize(
    ("precision", "plugin", "name"),
    [
        (None, Precision, "32-true"),
        (32, Precision, "32-true"),
        ("64", TruePrecision, "64-true"),
        ("bf16", MixedPrecision, "bf16-mixed"),
        (16, MixedPrecision, "16-mixed"),
        ("16-true", TruePrecision, "16-true"),
    ],
)
def test_precision_names_and_aliases(precision: Any, plugin: type, name: str) -> None:
    fabric = Fabric(accelerator="cpu", precision=precision)
    assert type(fabric.strategy.precision) is plugin
    assert fabric.strategy.precision.precision == name


def test_auto_accelerator_on_this_machine() -> None:
    fabric = Fabric()
    if not torch.cuda.is_available():
        assert isinstance(fabric.accelerator, CPUAccelerator)
        assert isinstance(fabric.strategy, SingleDeviceStrategy)


def test_strategy_instance_gets_the_parts() -> None:
    strategy = SingleDeviceStrategy(device="cpu")
    fabric = Fabric(accelerator="cpu", strategy=strategy, precision="bf16-mixed")
    assert fabric.strategy is strategy
    assert isinstance(strategy.accelerator, CPUAccelerator)
    assert isinstance(strategy.precision, MixedPrecision)


def test_environment_from_fabric_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_PRECISION", "bf16-mixed")
    monkeypatch.setenv("FABRIC_ACCELERATOR", "cpu")
    fabric = Fabric()
    assert fabric.strategy.precision.precision == "bf16-mixed"
    assert Fabric(precision="bf16-mixed").strategy.precision.precision == "bf16-mixed"
    with pytest.raises(ValueError, match="contradicts FABRIC_PRECISION='bf16-mixed'"):
        Fabric(precision="16-true")
