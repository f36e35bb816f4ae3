"""Lightning's ``strategies.launchers.launcher``: the launcher interface."""

from fabric.launchers.launcher import Launcher

__all__ = ["Launcher"]
