"""XLA through torch-xla on XLA's CPU back end (``PJRT_DEVICE=CPU``), in its own environment.

Each run is a fresh process (torch-xla reads ``PJRT_DEVICE``/``CPU_NUM_DEVICES`` once per process),
so every test sets the device count it needs: one pytest run covers 1, 2 and 4 XLA devices. The
reference is the same script on the plain CPU accelerator, computed here in the same session.
Run by ``nox -s xla``; skipped where torch-xla is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla", reason="needs torch-xla (nox -s xla)")

SCRIPT = Path(__file__).parent / "scripts" / "xla_train.py"
ROOT = Path(__file__).parents[2]
#: XLA's CPU back end and the CPU accelerator add in different orders: close, not bitwise equal
RTOL = 1e-5
pytestmark = pytest.mark.timeout(600)


def run(*args: str, devices: int | None = None, pjrt: bool = True, expect_fail: bool = False) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PJRT_", "CPU_NUM_DEVICES"))}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if pjrt:
        env["PJRT_DEVICE"] = "CPU"
    if devices is not None:
        env["CPU_NUM_DEVICES"] = str(devices)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300
    )
    if expect_fail:
        assert proc.returncode != 0, proc.stdout
        return proc.stderr
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


class Runs:
    """Each training run once per session: a run that saves midway is also the uninterrupted reference."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._cache: dict[str, Any] = {}

    def get(self, name: str, *args: str, devices: int | None = None, pjrt: bool = True) -> Any:
        if name not in self._cache:
            self._cache[name] = run(*args, devices=devices, pjrt=pjrt)
        return self._cache[name]

    def cpu(self) -> Any:
        return self.get("cpu", "--accelerator", "cpu", "--devices", "1", "--steps", "6", pjrt=False)

    def spmd(self, strategy: str, num_devices: int) -> Any:
        """6 steps of `strategy` over `num_devices`; over 4 devices it saves after step 3."""
        args = ["--strategy", strategy, "--steps", "6"]
        if num_devices == 4:
            kind = "full" if strategy == "xla" else "sharded"
            args += ["--save", self.checkpoint(strategy), "--save-at", "3", "--state-dict-type", kind]
        if strategy == "xla" and num_devices == 2:
            args[1] = "auto"  # two devices and strategy="auto": SPMD data parallel
        return self.get(f"{strategy}-{num_devices}", *args, devices=num_devices)

    def checkpoint(self, strategy: str) -> str:
        return str(self.tmp / f"{strategy}-ckpt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("xla"))


def assert_losses_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    assert a == pytest.approx(b, rel=RTOL, abs=1e-6), (a, b)


def test_cpu_reference_does_not_import_torch_xla(runs: Runs) -> None:
    assert runs.cpu()["device_type"] == "cpu"
    assert not runs.cpu()["torch_xla_imported"]


def test_single_xla_matches_cpu(runs: Runs) -> None:
    result = runs.get("single", "--devices", "1", "--steps", "6", devices=1)
    assert result["strategy"] == "SingleXLAStrategy"
    assert result["device_type"] == "xla"
    assert result["world_size"] == 1
    assert_losses_close(result["losses"], runs.cpu()["losses"])


@pytest.mark.parametrize("num_devices", [2, 4])
@pytest.mark.parametrize("strategy", ["xla", "xla_fsdp"])
def test_spmd_matches_cpu_and_each_other(runs: Runs, strategy: str, num_devices: int) -> None:
    """Data parallel and FSDPv2 over 2 and 4 devices: the losses of one device on the global batch."""
    result = runs.spmd(strategy, num_devices)
    assert result["strategy"] == {"xla": "XLAStrategy", "xla_fsdp": "XLAFSDPStrategy"}[strategy]
    assert result["num_devices"] == num_devices
    # SPMD is one process over all devices: ranks count processes
    assert (result["world_size"], result["global_rank"]) == (1, 0)
    assert_losses_close(result["losses"], runs.cpu()["losses"])
    assert_losses_close(result["losses"], runs.spmd("xla", 2)["losses"])


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_bf16_on_xla_matches_cpu(precision: str) -> None:
    reference = run("--accelerator", "cpu", "--devices", "1", "--precision", precision, pjrt=False)
    result = run("--strategy", "xla", "--precision", precision, devices=2)
    expected_dtype = "torch.bfloat16" if precision == "bf16-true" else "torch.float32"
    assert result["param_dtype"] == reference["param_dtype"] == expected_dtype
    # bf16 keeps 8 bits of mantissa: the two back ends round differently, within a few percent
    assert result["losses"] == pytest.approx(reference["losses"], rel=5e-2)
    assert result["losses"][-1] < result["losses"][0]


def test_float16_and_ddp_on_xla_are_clear_errors() -> None:
    stderr = run("--devices", "1", "--precision", "16-mixed", devices=1, expect_fail=True)
    assert "precision='16-mixed'" in stderr and "bf16-true" in stderr
    stderr = run("--strategy", "ddp", devices=2, expect_fail=True)
    assert "strategy='ddp'" in stderr and "'xla_fsdp'" in stderr


@pytest.mark.parametrize("strategy", ["xla", "xla_fsdp"])
def test_save_on_4_load_on_2_and_on_cpu(runs: Runs, strategy: str) -> None:
    """A checkpoint written over 4 devices (`xla`: one full file; `xla_fsdp`: a sharded directory)
    loads exactly on 2 devices and on a plain CPU run, and training goes on with the losses of the
    uninterrupted run."""
    straight = runs.spmd(strategy, 4)
    path = runs.checkpoint(strategy)
    if strategy == "xla":
        assert os.path.isfile(path)
    else:
        assert os.path.isfile(os.path.join(path, ".metadata"))
    on_two = run("--strategy", strategy, "--steps", "3", "--load", path, devices=2)
    on_cpu = run("--accelerator", "cpu", "--devices", "1", "--steps", "3", "--load", path, pjrt=False)
    assert straight["saved_digest"] == on_two["loaded_digest"] == on_cpu["loaded_digest"]
    assert_losses_close(on_two["losses"], straight["losses"][3:])
    assert_losses_close(on_cpu["losses"], straight["losses"][3:])


def test_exact_resume_single_xla_with_dropout(tmp_path: Path) -> None:
    path = str(tmp_path / "ckpt.pt")
    straight = run(
        "--devices", "1", "--steps", "6", "--dropout", "0.2", "--save", path, "--save-at", "3", devices=1
    )
    resumed = run("--devices", "1", "--steps", "3", "--dropout", "0.2", "--load", path, devices=1)
    assert resumed["losses"] == straight["losses"][3:]
    assert resumed["digest"] == straight["digest"]
