"""Launchers: how the processes of a run come to exist."""

from fabric.launchers.launcher import Launcher

__all__ = ["Launcher"]
