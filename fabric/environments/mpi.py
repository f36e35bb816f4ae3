"""Processes started by ``mpirun``/``mpiexec``, with ranks read through mpi4py."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from fabric.environments._env import env_port, mismatch
from fabric.environments._ports import find_free_network_port
from fabric.environments.cluster_environment import ClusterEnvironment

# Set by the launchers of OpenMPI (OMPI_*) and of MPICH, Intel MPI and PMI-based launchers (PMI_*).
_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


@dataclass(frozen=True)
class _MPIState:
    world_size: int
    global_rank: int
    local_rank: int
    local_size: int
    node_rank: int
    num_nodes: int
    main_address: str
    main_port: int


class MPIEnvironment(ClusterEnvironment):
    """Every process was started by an MPI launcher; the MPI communicator knows the ranks.

    Rank and size come from ``COMM_WORLD``, the local rank from the communicator of processes sharing
    memory (``Split_type(COMM_TYPE_SHARED)``, i.e. the same node), the node rank from the gathered
    host names, and the rendezvous address is the host of rank 0, with a free port found there
    (or ``MASTER_PORT`` as rank 0 sees it).

    mpi4py is imported only when this environment is used: importing ``mpi4py.MPI`` initializes MPI,
    which is slow and, on some clusters, fails outside a launcher.

    Example::

        # mpirun -np 8 python train.py
        env = MPIEnvironment()
        env.global_rank(), env.local_rank(), env.main_address
    """

    def __init__(self) -> None:
        self._state: _MPIState | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._mpi().main_address

    @property
    def main_port(self) -> int:
        return self._mpi().main_port

    @staticmethod
    def detect() -> bool:
        """True when an MPI launcher's variables are set and mpi4py is installed.

        The variables are checked first: they are free to read, and importing the ``mpi4py`` package
        (not ``mpi4py.MPI``) only costs anything when a launcher is there to use it.
        """
        if not any(name in os.environ for name in _LAUNCHER_VARIABLES):
            return False
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            return False
        return True

    def world_size(self) -> int:
        return self._mpi().world_size

    def set_world_size(self, size: int) -> None:
        """Ignored, as in Lightning: the MPI launcher fixed the world size."""

    def global_rank(self) -> int:
        return self._mpi().global_rank

    def set_global_rank(self, rank: int) -> None:
        """Ignored, as in Lightning: the MPI launcher fixed this process's rank."""

    def local_rank(self) -> int:
        return self._mpi().local_rank

    def node_rank(self) -> int:
        return self._mpi().node_rank

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """``devices`` must equal the processes per node and ``num_nodes`` the hosts of the job."""
        state = self._mpi()
        if num_devices != state.local_size:
            raise mismatch(
                "devices",
                num_devices,
                state.local_size,
                f"the MPI launcher ({state.local_size} processes on this node)",
                f"start {num_devices} processes per node (OpenMPI: `mpirun --npernode {num_devices}`).",
            )
        if num_nodes != state.num_nodes:
            raise mismatch(
                "num_nodes",
                num_nodes,
                state.num_nodes,
                f"the MPI launcher ({state.num_nodes} distinct hosts)",
                f"start the job on {num_nodes} hosts (`mpirun --host ...` or a hostfile).",
            )

    def _mpi(self) -> _MPIState:
        """Ask MPI everything once, in one collective pass that every rank runs alike.

        Collectives deadlock when only some ranks call them, so no property may start its own: the
        first query of any value runs all of them and later queries read the cache.
        """
        if self._state is not None:
            return self._state
        try:
            from mpi4py import MPI
        except ImportError as err:
            raise RuntimeError(
                "MPIEnvironment needs mpi4py, which is not installed. Install it with `pip install mpi4py`"
                " (it compiles against the MPI your launcher uses), or select another environment."
            ) from err
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        local_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        local_rank, local_size = local_comm.Get_rank(), local_comm.Get_size()
        local_comm.Free()
        hostnames: list[str] = comm.allgather(socket.gethostname())
        hosts = list(dict.fromkeys(hostnames))
        port = None
        if rank == 0:
            if "MASTER_PORT" in os.environ:
                port = env_port("MASTER_PORT", "Unset it to let rank 0 pick a free port.")
            else:
                # Bound on all interfaces: other nodes connect through the network, not the loopback.
                port = find_free_network_port("")
        main_address, main_port = comm.bcast((hostnames[0], port), root=0)
        self._state = _MPIState(
            world_size=size,
            global_rank=rank,
            local_rank=local_rank,
            local_size=local_size,
            node_rank=hosts.index(hostnames[rank]),
            num_nodes=len(hosts),
            main_address=main_address,
            main_port=main_port,
        )
        return self._state
