"""Lightning's ``strategies.launchers.multiprocessing``: processes started with spawn or fork."""

from fabric.launchers.multiprocessing import MultiprocessingLauncher

__all__ = ["MultiprocessingLauncher"]
