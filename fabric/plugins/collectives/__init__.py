"""Collectives on process groups of your own (:class:`TorchCollective`), as Lightning's ``plugins.collectives``."""

from fabric.plugins.collectives.collective import CollectibleGroup, Collective
from fabric.plugins.collectives.single_device import SingleDeviceCollective
from fabric.plugins.collectives.torch_collective import TorchCollective

__all__ = ["CollectibleGroup", "Collective", "SingleDeviceCollective", "TorchCollective"]
