"""Lightning's ``plugins.environments.lightning``: the environment where fabric starts the processes itself."""

from fabric.environments._ports import find_free_network_port
from fabric.environments.local import LocalEnvironment

#: Lightning's name for :class:`~fabric.environments.LocalEnvironment`
LightningEnvironment = LocalEnvironment

__all__ = ["LightningEnvironment", "find_free_network_port"]
