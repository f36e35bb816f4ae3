"""Loggers for ``Fabric.log``: an interface and a CSV implementation."""

from fabric.loggers.csv import CSVLogger
from fabric.loggers.logger import Logger

__all__ = ["CSVLogger", "Logger"]
