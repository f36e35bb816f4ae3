"""Lightning's ``plugins.environments.lsf``: IBM LSF (jsrun)."""

from fabric.environments.lsf import LSFEnvironment

__all__ = ["LSFEnvironment"]
