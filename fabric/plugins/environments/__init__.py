"""Lightning's ``plugins.environments`` names for :mod:`fabric.environments`, at Lightning's module paths.

``LightningEnvironment`` is Lightning's name for the environment where fabric starts the processes
itself: ours is :class:`~fabric.environments.LocalEnvironment`. ``XLAEnvironment`` imports, and says
what to use instead when constructed: the XLA strategy reads its own environment.
"""

from fabric.environments import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LocalEnvironment,
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from fabric.plugins.environments.xla import XLAEnvironment

LightningEnvironment = LocalEnvironment

__all__ = [
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "LocalEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "XLAEnvironment",
]
