"""Exact resume: a run interrupted mid-epoch and resumed from a checkpoint repeats the uninterrupted run.

Shuffled data with two workers and random augmentation in the workers, dropout, and Python's RNG in
the loss: the resumed run must see the same samples in the same order and end with bit-identical
weights, on one process and on two DDP processes. The interruption step is chosen by hypothesis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.environments import find_free_network_port

SCRIPT = Path(__file__).parent / "scripts" / "resume_run.py"
ROOT = Path(__file__).parent.parent
TOTAL = 23  # 10 batches per epoch: the run crosses two epoch boundaries


def _run(
    out: Path, devices: int, stop_at: int | None = None, strategy: str | None = None
) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(find_free_network_port()),
    }
    command = [sys.executable, str(SCRIPT), str(out), str(TOTAL)]
    if stop_at is not None:
        command.append(str(stop_at))
    command += ["--devices", str(devices)]
    if strategy is not None:
        command += ["--strategy", strategy]
    subprocess.run(command, env=env, check=True, timeout=120, cwd=out)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    base = tmp_path_factory.mktemp("reference")
    return {
        1: _run(base / "one", devices=1),
        2: _run(base / "two", devices=2),
        "fsdp": _run(base / "fsdp", devices=2, strategy="fsdp"),
    }


def _check(resumed: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    for rank, (a, b) in enumerate(zip(resumed, expected, strict=True)):
        assert a["step"] == b["step"] == TOTAL
        assert a["seen"] == b["seen"], f"rank {rank} saw different samples after resuming"
        assert a["weights"] == b["weights"], f"rank {rank} ended with different weights"


@pytest.mark.timeout(300)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_at=st.integers(1, TOTAL - 1))
def test_exact_resume_one_process(
    stop_at: int, reference: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    resumed = _run(tmp_path_factory.mktemp("resume1"), devices=1, stop_at=stop_at)
    _check(resumed, reference[1])


@pytest.mark.timeout(300)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_at=st.integers(1, TOTAL - 1))
def test_exact_resume_two_process_ddp(
    stop_at: int, reference: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    resumed = _run(tmp_path_factory.mktemp("resume2"), devices=2, stop_at=stop_at)
    _check(resumed, reference[2])
    # the two processes saw disjoint halves of the data
    assert not set(resumed[0]["seen"][:20]) & set(resumed[1]["seen"][:20])


@pytest.mark.timeout(300)
@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stop_at=st.integers(1, TOTAL - 1))
def test_exact_resume_two_process_fsdp(
    stop_at: int, reference: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # the checkpoint is a sharded directory here: every rank writes and reads only its shards
    resumed = _run(tmp_path_factory.mktemp("resume_fsdp"), devices=2, stop_at=stop_at, strategy="fsdp")
    _check(resumed, reference["fsdp"])


def test_loader_state_round_trip_in_process(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from fabric import Fabric

    fabric = Fabric(accelerator="cpu")
    make = lambda: fabric.setup_dataloaders(  # noqa: E731
        DataLoader(TensorDataset(torch.arange(12)), batch_size=2, shuffle=True)
    )
    loader = make()
    torch.manual_seed(0)
    iterator = iter(loader)
    first = [next(iterator)[0].tolist() for _ in range(2)]
    fabric.save(tmp_path / "c.pt", {"loader": loader})
    rest = [b[0].tolist() for b in iterator]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batches"] == 0

    fresh = make()
    torch.manual_seed(42)
    fabric.load(tmp_path / "c.pt", {"loader": fresh})
    assert [b[0].tolist() for b in fresh] == rest
    assert sorted(i for batch in first + rest for i in batch) == list(range(12))
