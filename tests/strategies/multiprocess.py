"""Running real multi-process scripts from tests: a fresh port, a clean environment, nothing left behind.

Each run starts ``python ...`` in its own session (process group), so that the test can find every
process the run created, including the ranks the launcher started, and kill them if the run hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric.environments import find_free_network_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"

# Variables of a launcher or scheduler that the test process may have inherited; a run must not see them.
_LAUNCH_VARIABLES = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)
_FORBIDDEN_PREFIXES = ("FABRIC_", "SLURM_", "LSB_", "JSM_", "OMPI_", "PMI_", "PMIX_")
_GRACE_SECONDS = 5.0


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a run: no launcher variables, one thread, the repo importable, a free port."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _LAUNCH_VARIABLES and not name.startswith(_FORBIDDEN_PREFIXES)
    }
    env["MASTER_PORT"] = str(find_free_network_port())
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class Run:
    returncode: int
    output: str
    started: float  # time.time() when the run started
    ended: float  # time.time() when its last process closed the output

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def run_python(
    args: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run ``python ARGS`` and wait until every process of its session has closed the output.

    The ranks the launcher starts inherit stdout, so the output closes only when the last of them
    exits. On timeout every process of the session is killed and the test fails with the output.
    """
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env if env is not None else launch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        output, _ = process.communicate()
        raise AssertionError(
            f"`python {' '.join(args)}` ran longer than {timeout} s; output:\n{output}"
        ) from None
    ended = time.time()
    # Helpers such as multiprocessing's resource tracker exit just after their parent: allow them a moment.
    leftovers = wait_until_gone(session_processes(process.pid), timeout=_GRACE_SECONDS)
    if leftovers:
        kill_session(process.pid)
        raise AssertionError(
            f"processes {leftovers} of the run were still alive after it ended; output:\n{output}"
        )
    return Run(process.returncode, output, started, ended)


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of a process, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return fields[0], int(fields[3])


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped counts as gone)."""
    state = _process_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def session_processes(session: int) -> list[int]:
    """Live processes of a session, found by scanning /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _process_state(int(entry.name))
            if state is not None and state[1] == session and state[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def kill_session(session: int) -> None:
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for ``pids`` to end; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if is_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if is_alive(pid)]
    return alive


def read_rank_results(out_dir: Path, world_size: int) -> list[dict[str, Any]]:
    """The JSON each rank wrote to ``out_dir/rank{N}.json``, in rank order."""
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(world_size)]
