"""Lightning's ``plugins.environments.kubeflow``: a PyTorchJob on Kubeflow."""

from fabric.environments.kubeflow import KubeflowEnvironment

__all__ = ["KubeflowEnvironment"]
