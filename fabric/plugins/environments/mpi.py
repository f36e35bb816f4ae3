"""Lightning's ``plugins.environments.mpi``: processes started by mpirun."""

from fabric.environments.mpi import MPIEnvironment

__all__ = ["MPIEnvironment"]
