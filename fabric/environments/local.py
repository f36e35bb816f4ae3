"""The default environment: fabric's own launcher creates the processes on this machine."""

from __future__ import annotations

import os
import socket
import weakref

from fabric.environments._env import env_int, env_port
from fabric.environments._ports import reserve_free_port
from fabric.environments.cluster_environment import ClusterEnvironment

_FIX = "Unset it, or set it to a valid value."


class LocalEnvironment(ClusterEnvironment):
    """Processes started by fabric itself, on one machine or on several machines started by hand.

    Reads ``MASTER_ADDR`` (default ``127.0.0.1``), ``MASTER_PORT`` (default: a free port, found once
    by this object, held for the run and never written to ``os.environ`` by it),
    ``NODE_RANK`` (default 0) and ``LOCAL_RANK`` (default 0). World size and global rank are not in the
    environment yet when the first process starts: the launcher or strategy computes them from
    ``devices`` and ``num_nodes`` and stores them with the setters.

    For several machines without a scheduler, set ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` on
    each machine and run the same command everywhere.

    Example::

        env = LocalEnvironment()
        env.set_world_size(2)
        env.set_global_rank(0)
        env.main_address, env.main_port  # ("127.0.0.1", 43817)
    """

    def __init__(self) -> None:
        self._world_size = 1
        self._global_rank = 0
        # Set only when this object chose the port, so that teardown removes what it added and nothing else;
        # the socket holds that port until teardown (see `main_port`).
        self._chosen_port: int | None = None
        self._reservation: socket.socket | None = None

    @property
    def creates_processes_externally(self) -> bool:
        """True in the children fabric's launcher started: it sets ``LOCAL_RANK`` for each of them.

        Without it this is the process the user started, and fabric must start the others.
        """
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        """``MASTER_ADDR``, else ``127.0.0.1``.

        The default is the loopback address so that a single-machine job never listens on a network
        interface the user did not name.
        """
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        """``MASTER_PORT``, else a free port on 127.0.0.1, found once by this object and held until teardown.

        Reading it changes nothing in the environment: the launcher writes the number into the environment
        of each process it starts, and the strategy publishes it in this one when it creates the process
        group (see ``fabric.lifecycle``), so every process agrees on it without a getter writing
        ``os.environ``. The port stays bound here (not listening; see ``reserve_free_port``) so that no
        other program takes it while the processes start; rank 0's store still binds it.
        """
        if "MASTER_PORT" in os.environ:
            return env_port("MASTER_PORT", _FIX)
        if self._chosen_port is None:
            self._reservation = reserve_free_port("127.0.0.1")
            # closed at teardown; this closes it (without a ResourceWarning) if the object goes first
            weakref.finalize(self, self._reservation.close)
            self._chosen_port = self._reservation.getsockname()[1]
        return self._chosen_port

    def __getstate__(self) -> dict:
        # A copy (a spawned process's, a deepcopy) knows the port; only the original holds it.
        state = self.__dict__.copy()
        state["_reservation"] = None
        return state

    @staticmethod
    def detect() -> bool:
        """Always true: this is the fallback when no scheduler is detected."""
        return True

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        if size < 1:
            raise ValueError(
                f"The world size must be at least 1, got {size}. Pass `devices` and `num_nodes` >= 1."
            )
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        if rank < 0:
            raise ValueError(f"The global rank must be 0 or more, got {rank}.")
        self._global_rank = rank

    def local_rank(self) -> int:
        return env_int("LOCAL_RANK", _FIX, default=0)

    def node_rank(self) -> int:
        # GROUP_RANK (torchelastic's name for it) stands in for NODE_RANK, as in Lightning
        return env_int("NODE_RANK", _FIX, default=env_int("GROUP_RANK", _FIX, default=0))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Several machines without a scheduler need the rendezvous spelled out on every machine.

        With ``num_nodes > 1`` each machine must name the same ``MASTER_ADDR`` and ``MASTER_PORT``
        (the defaults, loopback and a random free port, differ per machine) and its own ``NODE_RANK``.
        """
        if num_nodes <= 1:
            return
        fix = (
            "On every machine set MASTER_ADDR to the address of the node-rank-0 machine, MASTER_PORT to"
            " the same free port, and NODE_RANK to 0, 1, ... (or start the job with torchrun or SLURM)."
        )
        for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
            if name not in os.environ:
                raise ValueError(
                    f"`num_nodes={num_nodes}` needs the environment variable {name}, which is not set. {fix}"
                )
        node_rank = self.node_rank()
        if not 0 <= node_rank < num_nodes:
            raise ValueError(
                f"NODE_RANK={node_rank} is out of range for `num_nodes={num_nodes}`: expected 0 to"
                f" {num_nodes - 1}. Set NODE_RANK to this machine's index, or pass the number of machines"
                " as `num_nodes`."
            )

    def teardown(self) -> None:
        """Release the port this object chose, and remove ``WORLD_SIZE`` from ``os.environ``, as Lightning does.

        ``WORLD_SIZE`` is what fabric's launcher gave the processes it started; left behind, a second
        ``Fabric`` in the same process (or ``torch.distributed``'s ``env://`` rendezvous) would read a
        world size that no longer exists.
        """
        if self._reservation is not None:
            self._reservation.close()
        self._chosen_port = self._reservation = None
        os.environ.pop("WORLD_SIZE", None)
