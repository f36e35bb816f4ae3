"""Fixtures shared by every test: a clean environment and a cleared default dtype."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

_RUN_VARIABLES = (
    "FABRIC_ACCELERATOR",
    "FABRIC_STRATEGY",
    "FABRIC_DEVICES",
    "FABRIC_NUM_NODES",
    "FABRIC_PRECISION",
    "FABRIC_GLOBAL_SEED",
    "FABRIC_SEED_WORKERS",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "LSB_JOBID",
)


@pytest.fixture(autouse=True)
def _clean_run_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests must not see the variables of a launcher or scheduler they happen to run under."""
    for name in _RUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dtype = torch.get_default_dtype()
    yield
    # What the test set itself (e.g. seed_everything publishing its seed) must not reach the next test's
    # module-scoped runs, which start before this fixture cleans up for that test.
    for name in _RUN_VARIABLES:
        os.environ.pop(name, None)
    torch.set_default_dtype(dtype)
    assert torch.get_default_dtype() == dtype


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("OMP_NUM_THREADS", "1")
