"""Real schedulers and hosts for tests/cluster: a two-node SLURM cluster, OpenMPI, network namespaces.

These tests run in `nox -s cluster`, which installs the services and sets FABRIC_CLUSTER_TESTS=1. Anywhere
else they skip with a message saying so; under FABRIC_CLUSTER_TESTS=1 a missing service is a failure,
never a skip, so CI cannot pass them silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.services import SlurmCluster, missing_programs

ENABLED = os.environ.get("FABRIC_CLUSTER_TESTS") == "1"


def _unavailable(reason: str) -> None:
    if ENABLED:
        pytest.fail(f"FABRIC_CLUSTER_TESTS=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason}; these tests run in `nox -s cluster` (which installs and starts what they need)")


@pytest.fixture(autouse=True)
def cluster_session_only() -> None:
    if not ENABLED:
        pytest.skip(
            "cluster test: runs in `nox -s cluster` (FABRIC_CLUSTER_TESTS=1), not in the default suite"
        )
    if os.geteuid() != 0:
        _unavailable("the cluster tests need root (SLURM daemons, /etc/hosts, network namespaces)")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """munge, slurmctld and two slurmd (nodes fabric-n1, fabric-n2, or fabric-gwN-n1... under pytest-xdist's
    worker N>0), stopped at the end even on failure. One per test process: under ``nox -s cluster`` the
    two SLURM test files run side by side (pytest-xdist), each on its own cluster."""
    missing = missing_programs()
    if missing:
        _unavailable(
            f"SLURM is not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)"
        )
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1...: clusters side by side need own names
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), tag=worker if worker not in ("", "gw0") else "")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mpirun() -> str:
    path = shutil.which("mpirun")
    if path is None:
        _unavailable("OpenMPI is not installed (apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        _unavailable("mpi4py is not installed (pip install mpi4py)")
    return str(path)


@pytest.fixture(scope="session")
def ip_command() -> str:
    path = shutil.which("ip")
    if path is None:
        _unavailable("iproute2 is not installed (apt-get install iproute2)")
    return str(path)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A directory that every process of a job can write to (jobs run as root on this host)."""
    tmp_path.chmod(0o777)
    return tmp_path
