"""Lightning's ``plugins.environments.torchelastic``: processes started by torchrun."""

from fabric.environments.torchelastic import TorchElasticEnvironment

__all__ = ["TorchElasticEnvironment"]
