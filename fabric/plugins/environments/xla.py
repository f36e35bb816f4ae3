"""Lightning's ``plugins.environments.xla``: fabric's XLA strategy reads the XLA environment itself."""

from fabric.environments.cluster_environment import ClusterEnvironment
from fabric.plugins._unsupported import unsupported

XLAEnvironment = unsupported(
    "XLAEnvironment",
    __name__,
    "XLA runs are set up by the XLA strategy (`Fabric(accelerator='tpu')`), which reads its own environment",
    ClusterEnvironment,
)

__all__ = ["XLAEnvironment"]
