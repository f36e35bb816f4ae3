"""Cluster environments: who am I in the cluster (ranks, world size, rendezvous address).

One class per scheduler or launcher, all behind :class:`ClusterEnvironment`. :func:`detect_environment`
picks one from the environment variables, in this order, the first match winning:

1. :class:`TorchElasticEnvironment`: ``torchrun`` started the process. First, because torchrun run
   inside a SLURM or LSF allocation leaves the scheduler's variables set as well, and then torchrun's
   ranks are the ones that describe the processes.
2. :class:`SLURMEnvironment`: ``srun`` started the process (not an interactive ``bash`` allocation).
3. :class:`LSFEnvironment`: ``jsrun`` started the process in an LSF job.
4. :class:`MPIEnvironment`: an MPI launcher started the process and mpi4py is installed.
5. :class:`LocalEnvironment`: nothing did; fabric launches the processes itself.

:class:`KubeflowEnvironment` is never picked automatically: its variables (``MASTER_ADDR``, ``RANK``,
``WORLD_SIZE``) are also what a hand-made multi-node launch sets. Pass it explicitly.

Importing this package reads no variable and imports neither torch nor mpi4py.
"""

from __future__ import annotations

from fabric.environments._ports import find_free_network_port
from fabric.environments.cluster_environment import ClusterEnvironment
from fabric.environments.kubeflow import KubeflowEnvironment
from fabric.environments.local import LocalEnvironment
from fabric.environments.lsf import LSFEnvironment
from fabric.environments.mpi import MPIEnvironment
from fabric.environments.slurm import SLURMEnvironment, expand_slurm_nodelist
from fabric.environments.torchelastic import TorchElasticEnvironment

__all__ = [
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "detect_environment",
    "expand_slurm_nodelist",
    "find_free_network_port",
]

# Order matters; see the module docstring. Kubeflow is left out on purpose.
_DETECTION_ORDER: tuple[type[ClusterEnvironment], ...] = (
    TorchElasticEnvironment,
    SLURMEnvironment,
    LSFEnvironment,
    MPIEnvironment,
)


def detect_environment() -> ClusterEnvironment:
    """Return the environment the current process runs under, falling back to :class:`LocalEnvironment`.

    Example::

        env = detect_environment()
        if not env.creates_processes_externally:
            ...  # fabric starts the other processes
    """
    for environment in _DETECTION_ORDER:
        if environment.detect():
            return environment()
    return LocalEnvironment()
