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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla", reason="needs torch-xla (nox -s xla)")

SCRIPT = Path(__file__).parent / "scripts" / "xla_train.py"
ROOT = Path(__file__).parents[2]
#: XLA's CPU back end and the CPU accelerator add in different orders: close, not bitwise equal
RTOL = 1e-5
pytestmark = pytest.mark.timeout(600)


def run(*args: str, devices: int | None = None, pjrt: bool = True) -> Any:
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
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


#: every run of this module: name -> (arguments, CPU_NUM_DEVICES or None for a plain CPU run, the run
#: it needs first). A run that saves midway is also the uninterrupted reference its loads compare with.
PLAN: dict[str, tuple[tuple[str, ...], int | None, str | None]] = {
    "cpu": (("--accelerator", "cpu", "--devices", "1", "--steps", "6"), None, None),
    "single": (("--devices", "1", "--steps", "6"), 1, None),
    # two devices and strategy="auto": SPMD data parallel
    "xla-2": (("--strategy", "auto", "--steps", "6"), 2, None),
    "xla-4": (("--strategy", "xla", "--steps", "6", "--save", "{tmp}/xla-ckpt", "--save-at", "3"), 4, None),
    "xla_fsdp-2": (("--strategy", "xla_fsdp", "--steps", "6"), 2, None),
    "xla_fsdp-4": (
        ("--strategy", "xla_fsdp", "--steps", "6", "--save", "{tmp}/xla_fsdp-ckpt", "--save-at", "3"),
        4,
        None,
    ),
    "xla-load-2": (("--strategy", "xla", "--steps", "3", "--load", "{tmp}/xla-ckpt"), 2, "xla-4"),
    "xla-load-cpu": (
        ("--accelerator", "cpu", "--devices", "1", "--steps", "3", "--load", "{tmp}/xla-ckpt"),
        None,
        "xla-4",
    ),
    "xla_fsdp-load-2": (
        ("--strategy", "xla_fsdp", "--steps", "3", "--load", "{tmp}/xla_fsdp-ckpt"),
        2,
        "xla_fsdp-4",
    ),
    "xla_fsdp-load-cpu": (
        ("--accelerator", "cpu", "--devices", "1", "--steps", "3", "--load", "{tmp}/xla_fsdp-ckpt"),
        None,
        "xla_fsdp-4",
    ),
    "dropout": (
        (
            "--devices",
            "1",
            "--steps",
            "6",
            "--dropout",
            "0.2",
            "--save",
            "{tmp}/dropout.pt",
            "--save-at",
            "3",
        ),
        1,
        None,
    ),
    "dropout-resumed": (
        ("--devices", "1", "--steps", "3", "--dropout", "0.2", "--load", "{tmp}/dropout.pt"),
        1,
        "dropout",
    ),
    "cpu-bf16-true": (("--accelerator", "cpu", "--devices", "1", "--precision", "bf16-true"), None, None),
    "xla-bf16-true": (("--strategy", "xla", "--precision", "bf16-true"), 2, None),
    "cpu-bf16-mixed": (("--accelerator", "cpu", "--devices", "1", "--precision", "bf16-mixed"), None, None),
    "xla-bf16-mixed": (("--strategy", "xla", "--precision", "bf16-mixed"), 2, None),
}
#: runs at a time; each is mostly one core busy importing torch-xla and compiling
WORKERS = int(os.environ.get("FABRIC_XLA_TEST_WORKERS", "2"))


class Runs:
    """Starts every run of :data:`PLAN` at once (``WORKERS`` at a time, each after the run it needs)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._pool = ThreadPoolExecutor(max_workers=WORKERS)
        self._futures: dict[str, Future] = {}
        for name, (_, _, needs) in PLAN.items():
            if needs is None:
                self._submit(name)
        for name, (_, _, needs) in PLAN.items():
            if needs is not None:
                self._futures[needs].add_done_callback(lambda _, name=name: self._submit(name))

    def _submit(self, name: str) -> None:
        args, devices, _ = PLAN[name]
        args = tuple(a.format(tmp=self.tmp) for a in args)
        self._futures[name] = self._pool.submit(run, *args, devices=devices, pjrt=devices is not None)

    def __getitem__(self, name: str) -> Any:
        needs = PLAN[name][2]
        if needs is not None:
            self[needs]  # its future exists once the run it needs has ended
        return self._futures[name].result()

    def checkpoint(self, strategy: str) -> str:
        return str(self.tmp / f"{strategy}-ckpt")

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    plan = Runs(tmp_path_factory.mktemp("xla"))
    yield plan
    plan.close()


def assert_losses_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    assert a == pytest.approx(b, rel=RTOL, abs=1e-6), (a, b)


def test_cpu_reference_does_not_import_torch_xla(runs: Runs) -> None:
    assert runs["cpu"]["device_type"] == "cpu"
    assert not runs["cpu"]["torch_xla_imported"]


def test_single_xla_matches_cpu(runs: Runs) -> None:
    result = runs["single"]
    assert result["strategy"] == "SingleXLAStrategy"
    assert result["device_type"] == "xla"
    assert result["world_size"] == 1
    assert_losses_close(result["losses"], runs["cpu"]["losses"])


@pytest.mark.parametrize("num_devices", [2, 4])
@pytest.mark.parametrize("strategy", ["xla", "xla_fsdp"])
def test_spmd_matches_cpu_and_each_other(runs: Runs, strategy: str, num_devices: int) -> None:
    """Data parallel and FSDPv2 over 2 and 4 devices: the losses of one device on the global batch."""
    result = runs[f"{strategy}-{num_devices}"]
    assert result["strategy"] == {"xla": "XLAStrategy", "xla_fsdp": "XLAFSDPStrategy"}[strategy]
    assert result["num_devices"] == num_devices
    # SPMD is one process over all devices: ranks count processes
    assert (result["world_size"], result["global_rank"]) == (1, 0)
    assert_losses_close(result["losses"], runs["cpu"]["losses"])
    assert_losses_close(result["losses"], runs["xla-2"]["losses"])


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_bf16_on_xla_matches_cpu(runs: Runs, precision: str) -> None:
    reference, result = runs[f"cpu-{precision}"], runs[f"xla-{precision}"]
    expected_dtype = "torch.bfloat16" if precision == "bf16-true" else "torch.float32"
    assert result["param_dtype"] == reference["param_dtype"] == expected_dtype
    # bf16 keeps 8 bits of mantissa: the two back ends round differently, within a few percent
    assert result["losses"] == pytest.approx(reference["losses"], rel=5e-2)
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.parametrize("strategy", ["xla", "xla_fsdp"])
def test_save_on_4_load_on_2_and_on_cpu(runs: Runs, strategy: str) -> None:
    """A checkpoint written over 4 devices (`xla`: one full file; `xla_fsdp`: a sharded directory)
    loads exactly on 2 devices and on a plain CPU run, and training goes on with the losses of the
    uninterrupted run."""
    straight = runs[f"{strategy}-4"]
    path = runs.checkpoint(strategy)
    if strategy == "xla":
        assert os.path.isfile(path)
    else:
        assert os.path.isfile(os.path.join(path, ".metadata"))
    on_two, on_cpu = runs[f"{strategy}-load-2"], runs[f"{strategy}-load-cpu"]
    assert straight["saved_digest"] == on_two["loaded_digest"] == on_cpu["loaded_digest"]
    assert_losses_close(on_two["losses"], straight["losses"][3:])
    assert_losses_close(on_cpu["losses"], straight["losses"][3:])


def test_sharded_xla_checkpoint_consolidates_to_one_file(runs: Runs, tmp_path: Path) -> None:
    """`fabric consolidate` turns the directory written by xla_fsdp over 4 devices into one full file."""
    import torch
    from torch import nn

    from fabric.checkpoint.consolidate import consolidate

    runs["xla_fsdp-4"]  # wrote the directory
    output = tmp_path / "one.pt"
    consolidate(runs.checkpoint("xla_fsdp"), output)
    checkpoint = torch.load(output, weights_only=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Dropout(0.0), nn.Linear(32, 4))
    model.load_state_dict(checkpoint["model"])  # full shapes, every key
    assert checkpoint["step"] == 3


def test_exact_resume_single_xla_with_dropout(runs: Runs) -> None:
    straight, resumed = runs["dropout"], runs["dropout-resumed"]
    assert resumed["losses"] == straight["losses"][3:]
    assert resumed["digest"] == straight["digest"]
