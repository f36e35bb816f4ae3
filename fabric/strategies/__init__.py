"""Strategies: how models, optimizers, collectives and checkpoints work for one engine each."""

from fabric.strategies.single_device import SingleDeviceStrategy
from fabric.strategies.strategy import BackwardSyncControl, Strategy

__all__ = ["BackwardSyncControl", "SingleDeviceStrategy", "Strategy"]
