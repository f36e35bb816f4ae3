"""Lightning's ``plugins.environments.cluster_environment``: the interface every cluster environment implements."""

from fabric.environments.cluster_environment import ClusterEnvironment

__all__ = ["ClusterEnvironment"]
