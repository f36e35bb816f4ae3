"""Lightning's ``plugins.environments`` names for :mod:`fabric.environments`.

``LightningEnvironment`` is Lightning's name for the environment where fabric starts the processes
itself: ours is :class:`~fabric.environments.LocalEnvironment`.
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
]


def __getattr__(name: str) -> object:
    if name == "XLAEnvironment":
        raise AttributeError(
            "fabric.plugins.environments has no XLAEnvironment: XLA runs are set up by the XLA strategy "
            "(`Fabric(accelerator='tpu')`), which reads its own environment."
        )
    raise AttributeError(f"module 'fabric.plugins.environments' has no attribute {name!r}")
