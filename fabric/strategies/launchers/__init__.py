"""Lightning's ``strategies.launchers`` package path for :mod:`fabric.launchers`.

Lightning keeps its launchers under ``strategies``; ours live in :mod:`fabric.launchers`. Lightning's
launcher classes are private (``_MultiProcessingLauncher``...), so what a user can import from here are
our public classes under Lightning's module paths.
"""

from fabric.launchers.launcher import Launcher

__all__ = ["Launcher"]
