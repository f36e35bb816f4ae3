"""The one question an environment answers: who am I in the cluster.

A cluster environment turns the variables a scheduler or launcher left in ``os.environ`` into ranks,
a world size and a rendezvous address. It never starts processes and never touches
``torch.distributed``: launchers create processes, strategies create process groups, and both ask the
environment for the numbers they need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class ClusterEnvironment(ABC):
    """Ranks, world size and rendezvous address of the current process, as its cluster describes them.

    Subclasses read what their scheduler sets (``SLURM_PROCID``, ``RANK``, ``JSM_NAMESPACE_RANK`` ...).
    Values the scheduler fixes cannot be changed by the setters; values fabric decides itself (the
    local environment, where fabric's launcher starts the processes) are stored by them.

    Example::

        env = detect_environment()
        if env.creates_processes_externally:
            ...  # do not launch; every process already exists
        print(env.global_rank(), env.world_size(), env.main_address, env.main_port)
    """

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when the scheduler (srun, torchrun, jsrun, mpirun) started every process already.

        The launcher reads this to decide whether fabric must start the other processes itself or
        must not start any: launching under srun would multiply the processes the scheduler created.
        """

    @property
    @abstractmethod
    def main_address(self) -> str:
        """Host name or IP address of the process with global rank 0, where the rendezvous happens."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """TCP port on :attr:`main_address` that every process uses for the rendezvous."""

    @staticmethod
    @abstractmethod
    def detect() -> bool:
        """Whether the environment variables of this process say it runs under this environment.

        Static because detection happens before any environment object exists; it reads ``os.environ``
        only, so it is cheap and has no side effects.
        """

    @abstractmethod
    def world_size(self) -> int:
        """Number of processes taking part in the job, across all nodes."""

    @abstractmethod
    def set_world_size(self, size: int) -> None:
        """Record the world size fabric computed; environments that read it from the scheduler refuse
        a value that differs from theirs, since the mismatch would hang the rendezvous."""

    @abstractmethod
    def global_rank(self) -> int:
        """Index of this process among all processes, from ``0`` to ``world_size() - 1``."""

    @abstractmethod
    def set_global_rank(self, rank: int) -> None:
        """Record the global rank fabric computed; see :meth:`set_world_size` for scheduler-fixed values."""

    @abstractmethod
    def local_rank(self) -> int:
        """Index of this process among the processes on its node; usually the device index it uses."""

    @abstractmethod
    def node_rank(self) -> int:
        """Index of this process's node among the nodes of the job."""

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise ``ValueError`` when ``devices``/``num_nodes`` contradict what the scheduler allocated.

        Called once before anything is launched, so that a job asking for 4 devices inside a 2-task
        allocation fails with a message instead of hanging at the rendezvous. The default accepts
        everything: an environment without an allocation has nothing to contradict.
        """

    def teardown(self) -> None:
        """Undo what this environment changed in the process (for example an ``os.environ`` entry)."""
