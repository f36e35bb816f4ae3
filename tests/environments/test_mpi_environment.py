from __future__ import annotations

import importlib.util
import socket
import sys
import types
from typing import Any

import pytest

from fabric.environments import MPIEnvironment

MPI4PY_INSTALLED = importlib.util.find_spec("mpi4py") is not None

# Rank 3 of `mpirun -np 4 --npernode 2 --host nodeA:2,nodeB:2 python train.py` (OpenMPI 4).
OPENMPI_ENV = {
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    "OMPI_COMM_WORLD_NODE_RANK": "1",
    "OMPI_UNIVERSE_SIZE": "4",
    "OMPI_MCA_ess": "^singleton",
    "OMPI_MCA_orte_launch": "1",
    "PMIX_RANK": "3",
    "PMIX_NAMESPACE": "prterun-nodeA-20311@1",
}


class _FakeComm:
    """Just enough of mpi4py's communicator for one rank of a job, with canned answers from the others."""

    def __init__(self, rank: int, hostnames: list[str], from_root: Any = None) -> None:
        self.rank = rank
        self.hostnames = hostnames
        self.from_root = from_root
        self.collectives = 0

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return len(self.hostnames)

    def Split_type(self, split_type: int, key: int = 0) -> _FakeComm:
        self.collectives += 1
        mine = self.hostnames[self.rank]
        same_node = [rank for rank, host in enumerate(self.hostnames) if host == mine]
        return _FakeComm(same_node.index(self.rank), [mine] * len(same_node))

    def Free(self) -> None:
        pass

    def allgather(self, value: str) -> list[str]:
        self.collectives += 1
        assert value == self.hostnames[self.rank]
        return list(self.hostnames)

    def bcast(self, value: Any, root: int = 0) -> Any:
        self.collectives += 1
        return value if self.rank == root else self.from_root


def _install_fake_mpi4py(monkeypatch: pytest.MonkeyPatch, comm: _FakeComm) -> None:
    mpi = types.ModuleType("mpi4py.MPI")
    mpi.COMM_WORLD = comm  # type: ignore[attr-defined]
    mpi.COMM_TYPE_SHARED = 1  # type: ignore[attr-defined]
    package = types.ModuleType("mpi4py")
    package.MPI = mpi  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpi4py", package)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", mpi)


@pytest.mark.skipif(MPI4PY_INSTALLED, reason="checks the behaviour without mpi4py")
def test_not_detected_without_mpi4py_even_under_mpirun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OPENMPI_ENV.items():
        monkeypatch.setenv(name, value)
    assert not MPIEnvironment.detect()


@pytest.mark.skipif(MPI4PY_INSTALLED, reason="checks the behaviour without mpi4py")
def test_using_it_without_mpi4py_says_how_to_install() -> None:
    with pytest.raises(RuntimeError, match=r"MPIEnvironment needs mpi4py.*pip install mpi4py"):
        MPIEnvironment().world_size()


def test_not_detected_without_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_mpi4py(monkeypatch, _FakeComm(0, ["nodeA"]))
    assert not MPIEnvironment.detect()


@pytest.mark.parametrize("variables", [OPENMPI_ENV, {"PMI_SIZE": "4", "PMI_RANK": "3"}])
def test_detected_with_launcher_variables_and_mpi4py(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    _install_fake_mpi4py(monkeypatch, _FakeComm(0, ["nodeA"]))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert MPIEnvironment.detect()


def test_rank_three_of_four_on_two_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OPENMPI_ENV.items():
        monkeypatch.setenv(name, value)
    comm = _FakeComm(3, ["nodeA", "nodeA", "nodeB", "nodeB"], from_root=("nodeA", 41234))
    _install_fake_mpi4py(monkeypatch, comm)
    monkeypatch.setattr(socket, "gethostname", lambda: "nodeB")
    env = MPIEnvironment()
    assert env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert (env.main_address, env.main_port) == ("nodeA", 41234)
    env.validate_settings(num_devices=2, num_nodes=2)
    env.set_world_size(4)
    env.set_global_rank(3)
    assert comm.collectives == 3  # one pass: Split_type, allgather, bcast; later queries are cached
    with pytest.raises(
        ValueError, match=r"`devices=4` does not match .*2 processes on this node.*--npernode 4"
    ):
        env.validate_settings(num_devices=4, num_nodes=2)
    with pytest.raises(ValueError, match=r"`num_nodes=1` does not match .*2 distinct hosts"):
        env.validate_settings(num_devices=2, num_nodes=1)
    env.set_global_rank(0)  # ignored, as in Lightning: the MPI launcher fixed the rank
    assert env.global_rank() == 3


def test_rank_zero_picks_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_mpi4py(monkeypatch, _FakeComm(0, ["nodeA", "nodeB"]))
    monkeypatch.setattr(socket, "gethostname", lambda: "nodeA")
    env = MPIEnvironment()
    assert env.main_address == "nodeA"
    assert 1 <= env.main_port <= 65535
    monkeypatch.setenv("MASTER_PORT", "29400")
    other = MPIEnvironment()
    assert other.main_port == 29400
