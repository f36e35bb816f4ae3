"""Processes started by ``jsrun`` in an IBM Spectrum LSF job (Summit-style clusters)."""

from __future__ import annotations

import os
import socket

from fabric.environments._env import env_int, env_port, mismatch
from fabric.environments._scheduled import ScheduledEnvironment


def lsf_port_from_job_id(job_id: str | None) -> int:
    """Lightning's LSF port: ``LSB_JOBID % 1000 + 10000``, so that mixed Lightning/fabric jobs agree.

    Raises ``ValueError`` (Lightning's type) when the job id is missing or not a number.
    """
    if job_id is None:
        raise ValueError(
            "The environment variable LSB_JOBID is not set, so no rendezvous port can be derived. Run inside an "
            "LSF job (`bsub`, then `jsrun`), or set MASTER_PORT."
        )
    if not job_id.strip().isdigit():
        raise ValueError(
            f"LSB_JOBID={job_id!r} is not a number; LSF job ids are. Set MASTER_PORT to choose a port."
        )
    return int(job_id) % 1000 + 10000


_REQUIRED = ("LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE")


class LSFEnvironment(ScheduledEnvironment):
    """Every process is a ``jsrun`` task; ranks come from ``JSM_NAMESPACE_*``, hosts from the rankfile.

    ``JSM_NAMESPACE_SIZE``, ``JSM_NAMESPACE_RANK`` and ``JSM_NAMESPACE_LOCAL_RANK`` give world size,
    global and local rank. The hosts come from the file named by ``LSB_DJOB_RANKFILE`` (one line per
    slot), not from ``LSB_HOSTS``, which LSF leaves unset when the list grows too long. Its first line
    is the launch node, which runs no task, so it is skipped. The node rank is the index of this host
    among the distinct compute hosts, and the rendezvous is on the first of them at a port derived
    from ``LSB_JOBID`` (or ``MASTER_PORT`` if set).

    Example::

        # bsub -nnodes 2 ...; jsrun -n 12 -a 1 -g 1 python train.py
        env = LSFEnvironment()
        env.main_address, env.node_rank()  # ("a01n01", 1) on a01n02
    """

    _WORLD_SIZE_VARIABLE = "JSM_NAMESPACE_SIZE"
    _GLOBAL_RANK_VARIABLE = "JSM_NAMESPACE_RANK"
    _FIX = "Start the script with `jsrun` inside an LSF job, or do not select LSFEnvironment."

    def __init__(self) -> None:
        """Check, as Lightning does at construction, that the job's rankfile and id are there.

        The rankfile gives the hosts and the job id the rendezvous port, so without them no process can
        find the others: failing here stops a misconfigured launch before anything starts.
        """
        rankfile = os.environ.get("LSB_DJOB_RANKFILE")
        if rankfile is None:
            raise ValueError(f"Did not find the environment variable `LSB_DJOB_RANKFILE`. {self._FIX}")
        if not rankfile:
            raise ValueError(
                "The environment variable `LSB_DJOB_RANKFILE` is empty: LSF sets it to the path of the job's"
                f" rankfile. {self._FIX}"
            )
        if "MASTER_PORT" not in os.environ and "LSB_JOBID" not in os.environ:
            raise ValueError(
                "Could not find job id in environment variable LSB_JOBID, from which the rendezvous port is"
                f" derived. {self._FIX} Or set MASTER_PORT."
            )

    @property
    def main_address(self) -> str:
        return self._compute_hosts()[0]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return env_port("MASTER_PORT", "Unset it to derive the port from LSB_JOBID.")
        return lsf_port_from_job_id(os.environ.get("LSB_JOBID"))

    @staticmethod
    def detect() -> bool:
        """True when the LSF job variables and jsrun's namespace variables are all present."""
        return all(name in os.environ for name in _REQUIRED)

    def local_rank(self) -> int:
        return env_int("JSM_NAMESPACE_LOCAL_RANK", self._FIX)

    def node_rank(self) -> int:
        """Index of this host among the distinct compute hosts, in rankfile order.

        Rankfiles may list fully qualified names while ``gethostname`` returns the short one (or the
        reverse), so both are compared by their first label when the full names differ.
        """
        hosts = self._compute_hosts()
        distinct = list(dict.fromkeys(hosts))
        hostname = socket.gethostname()
        if hostname in distinct:
            return distinct.index(hostname)
        short = [host.split(".")[0] for host in distinct]
        if hostname.split(".")[0] in short:
            return short.index(hostname.split(".")[0])
        raise RuntimeError(
            f"This host, {hostname!r}, is not among the compute hosts {distinct} listed in"
            f" LSB_DJOB_RANKFILE={os.environ.get('LSB_DJOB_RANKFILE')!r}. Start the script with `jsrun`"
            " so that it runs on the job's compute hosts."
        )

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """``num_nodes`` must match the compute hosts, and ``devices * num_nodes`` the task count.

        The rankfile lists slots (CPU cores), not tasks, so the tasks per node are checked through the
        total ``JSM_NAMESPACE_SIZE``.
        """
        rankfile = os.environ.get("LSB_DJOB_RANKFILE")
        nodes = len(dict.fromkeys(self._compute_hosts()))
        if num_nodes != nodes:
            raise mismatch(
                "num_nodes",
                num_nodes,
                nodes,
                f"LSB_DJOB_RANKFILE={rankfile!r} ({nodes} compute hosts)",
                f"submit the job with `bsub -nnodes {num_nodes}`.",
            )
        world_size = self.world_size()
        if num_devices * num_nodes != world_size:
            raise mismatch(
                "devices",
                num_devices,
                world_size // nodes,
                f"JSM_NAMESPACE_SIZE={world_size} over {nodes} nodes",
                f"start jsrun with {num_devices * num_nodes} tasks in all ({num_devices} per node).",
            )

    def _compute_hosts(self) -> list[str]:
        """Host of every compute slot, from the rankfile, without the launch node on the first line."""
        path = os.environ.get("LSB_DJOB_RANKFILE")
        if not path:  # Lightning's type (ValueError) for a missing or empty variable
            raise ValueError(f"The environment variable LSB_DJOB_RANKFILE is not set or empty. {self._FIX}")
        try:
            with open(path, encoding="utf-8") as file:
                lines = [line.strip() for line in file]
        except OSError as err:
            raise type(err)(  # Lightning's type: FileNotFoundError, PermissionError, ...
                f"Cannot read the LSF rankfile LSB_DJOB_RANKFILE={path!r}: {err.strerror}. It is written by"
                " LSF when the job starts; run inside the job (`bsub`, then `jsrun`), or unset the variable."
            ) from err
        hosts = [line for line in lines if line]
        if len(hosts) < 2:
            raise ValueError(
                f"The LSF rankfile LSB_DJOB_RANKFILE={path!r} lists no compute host: it has"
                f" {len(hosts)} non-empty line(s), and the first is the launch node. Request compute nodes"
                " with `bsub -nnodes N` and start the script with `jsrun`."
            )
        return hosts[1:]
