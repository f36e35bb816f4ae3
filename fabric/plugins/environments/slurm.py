"""Lightning's ``plugins.environments.slurm``: SLURM (srun)."""

from fabric.environments.slurm import SLURMEnvironment

__all__ = ["SLURMEnvironment"]
