"""Start the other local processes by re-running the user's own command (``python script.py ...``).

Process 0 is the one the user started. It starts processes 1..N-1 with the same interpreter, the same
script or module and the same arguments, telling each its ``LOCAL_RANK`` through the environment.
It then watches them: when one fails, it stops the others and exits with an error, so a crash never
leaves the rest waiting in a collective. Children die with their parent (``PR_SET_PDEATHSIG`` on
Linux), so killing process 0 leaves nothing behind either. At a normal exit process 0 waits for the
children and exits non-zero if any of them failed (``fabric.lifecycle`` runs that step).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fabric import lifecycle
from fabric.environments import ClusterEnvironment
from fabric.launchers.launcher import Launcher
from fabric.utilities.threads import limit_threads

_POLL_SECONDS = 0.2
_TERMINATE_GRACE_SECONDS = 5.0


class SubprocessScriptLauncher(Launcher):
    """Re-run the user's command for local ranks 1..N-1 on this node."""

    requires_function = False

    def __init__(self, environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
        self.environment = environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.children: list[subprocess.Popen] = []
        self._stopping = False  # set once this process stops the children itself

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        if not self.environment.creates_processes_externally and self.num_processes > 1:
            self._start_children()
        try:
            return function(*args, **kwargs)
        except BaseException as error:
            lifecycle.mark_failed(error)
            raise

    def _start_children(self) -> None:
        # here, not at the top: constructing a Fabric imports this module, and only launching needs it
        from fabric.launchers.direct import die_with_parent

        command = _rerun_command()
        # This process's share of the cores; the children inherit it through OMP_NUM_THREADS.
        limit_threads(self.num_processes)
        env = os.environ.copy()
        env["MASTER_ADDR"] = self.environment.main_address
        env["MASTER_PORT"] = str(self.environment.main_port)
        env["NODE_RANK"] = str(self.environment.node_rank())
        env["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        for local_rank in range(1, self.num_processes):
            env["LOCAL_RANK"] = str(local_rank)
            # From the directory the command was started in, even if the script changed directory since.
            # The preexec_fn makes Python fork this whole process (15-35 ms with torch loaded) instead of
            # using vfork (under 1 ms). Asking for PR_SET_PDEATHSIG in the child instead was tried: rank 1
            # then aborted at exit ("terminate called without an active exception") in 4 of about 55
            # launches, against 0 of 40 with this fork; until that is understood, the fork stays.
            self.children.append(
                subprocess.Popen(
                    command, env=dict(env), cwd=lifecycle.STARTUP_CWD, preexec_fn=die_with_parent
                )
            )
        # This process is local rank 0; children and library code alike may read it from here.
        os.environ["LOCAL_RANK"] = "0"
        watchdog = threading.Thread(target=self._watch, name="fabric-watchdog", daemon=True)
        watchdog.start()
        lifecycle.install()  # several processes: a failure here must stop the children at once
        lifecycle.on_exit(self._at_exit, order=lifecycle.STOP_CHILDREN)

    def _watch(self) -> None:
        """Stop the whole run as soon as one child fails."""
        while True:
            running = False
            for rank, child in enumerate(self.children, start=1):
                code = child.poll()
                if code is None:
                    running = True
                elif code != 0:
                    if self._stopping:
                        return  # stopped by `_terminate_children`, not a failure of the child
                    sys.stdout.flush()
                    print(
                        f"[fabric] local rank {rank} (pid {child.pid}) exited with code {code}; stopping the other "
                        f"processes of this run.",
                        file=sys.stderr,
                        flush=True,
                    )
                    self._terminate_children()
                    os._exit(1)
            if not running:
                return
            time.sleep(_POLL_SECONDS)

    def _at_exit(self) -> None:
        """After a failure here: stop the children. Otherwise wait for them, and fail if one failed."""
        if lifecycle.has_failed():
            self._terminate_children()
            return
        for child in self.children:
            child.wait()  # the watchdog ends the run if a child fails meanwhile
        failed = [(rank, child) for rank, child in enumerate(self.children, start=1) if child.returncode]
        for rank, child in failed:
            print(
                f"[fabric] local rank {rank} (pid {child.pid}) exited with code {child.returncode} after this "
                f"process finished; the run failed.",
                file=sys.stderr,
                flush=True,
            )
        if failed:
            lifecycle.fail_exit(1)

    def _terminate_children(self) -> None:
        self._stopping = True
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
        for child in self.children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _rerun_command() -> list[str]:
    """The command that started this process: ``python script.py ARGS`` or ``python -m module ARGS``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    script = getattr(main, "__file__", None)
    if not script or sys.argv[0] in ("-c", ""):
        raise RuntimeError(
            "Fabric(strategy='ddp') starts the other processes by re-running your script, but this process "
            "was not started from a script file (interactive session, notebook or `python -c`). Use "
            "strategy='ddp_notebook' (fork) or 'ddp_spawn' with `fabric.launch(fn)`, or run a script."
        )
    # `__main__.__file__` is absolute since Python 3.9; a relative one is relative to the start directory.
    return [sys.executable, os.path.join(lifecycle.STARTUP_CWD, script), *sys.argv[1:]]
