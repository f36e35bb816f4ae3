"""Every environment test starts from an environment without scheduler or launcher variables.

The tests may run inside SLURM, under torchrun or in a Kubernetes pod; the real variables of that job
would otherwise leak into the values under test.
"""

from __future__ import annotations

import os

import pytest

_PREFIXES = ("SLURM_", "LSB_", "JSM_", "OMPI_", "PMI_", "PMIX_", "TORCHELASTIC_")
_NAMES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "KUBERNETES_PORT",
)


@pytest.fixture(autouse=True)
def clean_cluster_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_PREFIXES) or name in _NAMES:
            monkeypatch.delenv(name)
