"""Collectives on process groups of your own (:class:`TorchCollective`), as Lightning's ``plugins.collectives``."""

from fabric.plugins.collectives.collective import CollectibleGroup
from fabric.plugins.collectives.torch_collective import TorchCollective

__all__ = ["CollectibleGroup", "TorchCollective"]
