"""Moving and wrapping a model for XLA keeps what the model is: tied parameters, the optimizer's pairing, a
non-tensor output under FSDPv2, and activation checkpointing on its blocks (``scripts/xla_modules.py``).

Each strategy runs in its own process on XLA's CPU back end (``single_xla`` on 1 device, SPMD ``xla`` and
``xla_fsdp`` on 2). Losses are compared with the same model trained eagerly on the CPU in that process: XLA's
CPU back end reorders some reductions, so they agree to 1e-5, not bitwise. An untied head (it trains apart from
the embedding) or a parameter paired with the wrong CPU original (the optimizer then updates a tensor the model
no longer uses) moves the losses by far more than that from the second step on.
Run by ``nox -s xla``; skipped without torch-xla.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla", reason="needs torch-xla (nox -s xla)")

SCRIPT = Path(__file__).parent / "scripts" / "xla_modules.py"
ROOT = Path(__file__).parents[2]
TOLERANCE = 1e-5
pytestmark = pytest.mark.timeout(600)


def run(strategy: str, devices: int) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "PJRT_", "CPU_NUM_DEVICES"))}
    env.update(OMP_NUM_THREADS="1", PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(devices))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), strategy, str(devices)],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


#: one run of the script per strategy, shared by the tests that read its parts
_run_once = functools.cache(run)


@pytest.mark.parametrize(("strategy", "devices"), [("single_xla", 1), ("xla", 2), ("xla_fsdp", 2)])
def test_model_keeps_ties_pairing_and_checkpointing(strategy: str, devices: int) -> None:
    result = _run_once(strategy, devices)
    for name, expected_checkpointed in (("plain", 0), ("checkpointed", 2)):
        part = result[name]
        assert "error" not in part, f"[{name}]\n{part.get('error')}"
        # the head stays the embedding (Module.to("xla") made two tensors of it)
        assert part["tied"], name
        # the optimizer made before setup updates the model's own XLA parameters, each paired by identity
        assert part["optimizer_holds_model_parameters"], name
        # the blocks recompute their activations (activation_checkpointing_policy={Block})
        assert part["checkpointed_modules"] == expected_checkpointed, name
        # the eager CPU run's losses: wrong pairing, a lost tie, or a refused output would not give them
        diffs = [abs(a - b) for a, b in zip(part["losses"], part["reference"])]
        assert max(diffs) < TOLERANCE, (name, part["losses"], part["reference"])
    # checkpointing a model that keeps a key-value cache in training is refused, with the fix
    assert "config.use_cache is True" in result["cache_refused"]
    assert "model.config.use_cache = False" in result["cache_refused"]


@pytest.mark.parametrize(("strategy", "devices"), [("single_xla", 1), ("xla", 2), ("xla_fsdp", 2)])
def test_init_module_gives_the_seeded_cpu_construction(strategy: str, devices: int) -> None:
    """``init_module()`` and ``init_module(empty_init=True)`` give, exactly, the weights the same seed gives an
    eager CPU construction (the model's own init included), tied weights stay tied and the model trains as the
    CPU reference. Before: ``init_module()`` drew on XLA's generator (not seeded by ``torch.manual_seed``, 0.1
    away from the CPU's values) and ``empty_init=True`` skipped the initialization."""
    result = _run_once(strategy, devices)["initial_weights"]
    assert "error" not in result, result["error"]
    for name, created_on in (("eager", ["cpu"]), ("empty_init", ["meta"])):
        part = result[name]
        assert part["max_diff_to_cpu"] == 0.0, (name, part["max_diff_to_cpu"])
        assert part["created_on"] == created_on, name
        assert part["tied"], name
        assert part["optimizer_holds_model_parameters"], name
        diffs = [abs(a - b) for a, b in zip(part["losses"], result["reference"])]
        assert max(diffs) < TOLERANCE, (name, part["losses"], result["reference"])


def test_checkpointing_policy_error_names_the_strategy() -> None:
    """A policy that is neither module classes nor a callable is refused at construction, naming the strategy."""
    from fabric.strategies.xla import XLAStrategy

    with pytest.raises(TypeError, match=r"XLAStrategy\(activation_checkpointing_policy=\{1\}\)"):
        XLAStrategy(activation_checkpointing_policy={1})  # type: ignore[arg-type]
