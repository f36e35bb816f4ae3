"""Lightning's ``strategies.launchers.subprocess_script``: the script re-run once per extra process."""

from fabric.launchers.subprocess_script import SubprocessScriptLauncher

__all__ = ["SubprocessScriptLauncher"]
