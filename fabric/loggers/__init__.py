"""Loggers for ``Fabric.log``: an interface, a CSV writer and a TensorBoard writer (optional extra)."""

from fabric.loggers.csv import CSVLogger
from fabric.loggers.logger import Logger
from fabric.loggers.tensorboard import TensorBoardLogger

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
