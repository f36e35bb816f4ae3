"""Lightning's ``loggers.csv_logs`` module path for :class:`fabric.loggers.csv.CSVLogger`."""

from fabric.loggers.csv import CSVLogger

__all__ = ["CSVLogger"]
