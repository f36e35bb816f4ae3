"""Choosing XLA: what "auto" picks, what happens without torch-xla, and that nothing imports it early.

These run in every environment: with torch-xla missing (the default test environment) they check
the install error; with torch-xla installed (``nox -s xla``) they check the automatic choice.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fabric import Fabric

ROOT = Path(__file__).parents[2]
HAS_XLA = importlib.util.find_spec("torch_xla") is not None


def python(code: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PJRT_", "CPU_NUM_DEVICES"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **env_vars)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(HAS_XLA, reason="checks the error shown when torch-xla is missing")
@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"accelerator": "tpu"}, "accelerator='tpu'"),
        ({"accelerator": "xla"}, "accelerator='xla'"),
        ({"strategy": "xla"}, "accelerator='auto'"),
        ({"strategy": "xla_fsdp", "devices": 2}, "accelerator='auto'"),
    ],
)
def test_xla_without_torch_xla_is_a_clear_error(kwargs: dict, named: str) -> None:
    with pytest.raises(ModuleNotFoundError, match=r"torch-xla, which is not installed") as info:
        Fabric(**kwargs)
    message = str(info.value)
    assert named in message
    assert "pip install 'torch-fabric[xla]'" in message


@pytest.mark.skipif(HAS_XLA, reason="checks the machine without torch-xla")
def test_auto_is_not_xla_without_torch_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    assert Fabric().accelerator.name == "cpu"


def test_xla_strategy_on_cpu_accelerator_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"XLA strategies run on XLA devices"):
        Fabric(accelerator="cpu", strategy="xla")


def test_import_and_cpu_run_do_not_import_torch_xla() -> None:
    code = (
        "import sys, torch, fabric\n"
        "f = fabric.Fabric(accelerator='auto', devices=1)\n"
        "assert f.accelerator.name == 'cpu', f.accelerator\n"
        "assert 'torch_xla' not in sys.modules, 'torch_xla was imported'\n"
        "print('ok')\n"
    )
    proc = python(code)  # no PJRT_DEVICE: not an XLA machine, even with torch-xla installed
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.skipif(not HAS_XLA, reason="needs torch-xla")
def test_auto_picks_xla_when_a_device_is_present() -> None:
    code = (
        "import fabric\n"
        "f = fabric.Fabric(devices=1)\n"
        "print(f.accelerator.name, type(f.strategy).__name__)\n"
        "f2 = fabric.Fabric(accelerator='tpu', devices='auto')\n"
        "print(type(f2.strategy).__name__, f2.strategy.num_devices)\n"
    )
    proc = python(code, PJRT_DEVICE="CPU", CPU_NUM_DEVICES="2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["xla", "SingleXLAStrategy", "XLAStrategy", "2"]


@pytest.mark.skipif(not HAS_XLA, reason="needs torch-xla")
def test_device_count_other_than_one_or_all_is_a_clear_error() -> None:
    proc = python(
        "import fabric; fabric.Fabric(accelerator='xla', devices=3)", PJRT_DEVICE="CPU", CPU_NUM_DEVICES="4"
    )
    assert proc.returncode != 0
    assert "devices=3" in proc.stderr and "CPU_NUM_DEVICES=3" in proc.stderr


@pytest.mark.skipif(not HAS_XLA, reason="needs torch-xla")
@pytest.mark.parametrize("precision", ["16-mixed", "16-true", "64-true"])
def test_unsupported_precision_on_xla_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    with pytest.raises(ValueError, match=rf"precision='{precision}'.*'bf16-true'"):
        Fabric(accelerator="xla", devices=1, precision=precision)


@pytest.mark.skipif(not HAS_XLA, reason="needs torch-xla")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "ddp_spawn"])
def test_non_xla_strategy_on_xla_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, strategy: str) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    with pytest.raises(ValueError, match=rf"strategy='{strategy}'.*'xla_fsdp'"):
        Fabric(accelerator="tpu", devices=1, strategy=strategy)


@pytest.mark.skipif(not HAS_XLA, reason="needs torch-xla")
def test_optimizer_made_before_setup_and_extra_parameters_on_one_xla_device() -> None:
    """The move to XLA makes new parameters: an optimizer made before setup is re-pointed, not refused
    (issue 19 #4's check broke this), and a parameter outside the model is refused with what to do."""
    code = (
        "import torch, fabric\n"
        "f = fabric.Fabric(accelerator='xla', devices=1)\n"
        "model = torch.nn.Linear(2, 2)\n"
        "model, opt = f.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))\n"
        "print(all(p.device.type == 'xla' for g in opt.param_groups for p in g['params']))\n"
        "other = torch.nn.Linear(2, 2)\n"
        "t = torch.nn.Parameter(torch.ones(1))\n"
        "try:\n"
        "    f.setup(other, torch.optim.SGD([*other.parameters(), t], lr=0.1))\n"
        "except ValueError as e:\n"
        "    print('refused', 'part of the model' in str(e))\n"
    )
    proc = python(code, PJRT_DEVICE="CPU", CPU_NUM_DEVICES="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "refused", "True"]


@pytest.mark.skipif(not HAS_XLA, reason="needs torch-xla")
@pytest.mark.parametrize(("fabric_first", "expected"), [(False, "refused"), (True, "trained")])
def test_backward_before_the_xla_runtime_started_is_a_clear_error_at_launch(
    fabric_first: bool, expected: str
) -> None:
    """A backward on the CPU before the XLA runtime started leaves torch's autograd engine without XLA
    devices (pytorch/xla#4174; even after `import torch_xla`): the old code failed at the first
    `fabric.backward` with an internal assert of torch; now launch says what happened and what to do.
    Creating the Fabric first, the fix the message gives, trains."""
    backward = "x = torch.ones(2, requires_grad=True)\n(x * 2).sum().backward()\n"
    code = (
        "import torch, torch_xla, fabric\n"
        + ("" if fabric_first else backward)
        + "f = fabric.Fabric(accelerator='xla', devices=1)\n"
        + (backward if fabric_first else "")
        + "try:\n"
        "    f.launch()\n"
        "    model = f.setup_module(torch.nn.Linear(2, 1))\n"
        "    f.backward(model(f.to_device(torch.ones(1, 2))).sum())\n"
        "    print('trained')\n"
        "except RuntimeError as e:\n"
        "    print('refused' if 'Create the Fabric' in str(e) and '4174' in str(e) else 'obscure')\n"
    )
    proc = python(code, PJRT_DEVICE="CPU", CPU_NUM_DEVICES="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == expected, (proc.stdout, proc.stderr[-2000:])
