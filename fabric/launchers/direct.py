"""Start the processes of a one-node ``fabric run`` directly: torchrun's variables, no torch in the launcher.

torchrun's agent imports all of torch (1-1.5 s of CPU) before it starts a worker, and then hosts a
rendezvous store, a watchdog and a restart loop. With one node and no restarts none of that is needed:
the launcher only has to start N copies of ``python -u SCRIPT ARGS``, give each the variables torchrun
gives, forward signals and watch the exit codes. This module does that with the standard library only,
so the workers start while torchrun would still be importing torch, and the launcher costs almost no CPU.
Multi-node runs and ``--max-restarts N > 0`` still go through torchrun (rendezvous, elastic restarts).

Each worker gets the variables a torchrun worker gets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``GROUP_WORLD_SIZE``, ``ROLE_RANK``, ``ROLE_WORLD_SIZE``,
``ROLE_NAME``, ``MASTER_ADDR``, ``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``,
``TORCHELASTIC_MAX_RESTARTS``, ``TORCHELASTIC_RUN_ID``, ``TORCHELASTIC_ERROR_FILE``,
``TORCHELASTIC_SIGNALS_TO_HANDLE``, ``TORCH_NCCL_ASYNC_ERROR_HANDLING``, and ``OMP_NUM_THREADS=1``
when it is unset and there are several processes), so scripts that read ``os.environ["RANK"]`` or call
``init_process_group()`` keep working. One value differs, on purpose: ``TORCHELASTIC_USE_AGENT_STORE``
is ``False``, because there is no agent store; rank 0 hosts the rendezvous store on ``MASTER_PORT``,
as ``init_process_group``'s ``env://`` and fabric's own rendezvous do whenever that variable is not ``True``.

What the user relies on stays as under torchrun: the workers run in their own session (a Ctrl-C reaches
them once, through the launcher), SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to the
launcher are forwarded to every worker (pre-emption: ``fabric.should_stop``), a worker that fails stops
the others at once, and the launcher exits with that worker's code; children die with the launcher
(``PR_SET_PDEATHSIG``). Script arguments pass through untouched.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

#: what torchrun's ``--signals-to-handle`` defaults to; torchrun exports it to its workers
_TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
#: signals the launcher passes on to every worker instead of dying (SIGUSR1/2: pre-emption notices)
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
#: how long the others get to exit after SIGTERM once one worker failed, before SIGKILL
_TERMINATE_GRACE_SECONDS = 5.0


def worker_environment(
    rank: int, nproc: int, main_address: str, main_port: int, error_dir: str, base: dict[str, str]
) -> dict[str, str]:
    """The environment of local worker ``rank``: ``base`` plus the variables a torchrun worker gets."""
    env = dict(base)
    if "OMP_NUM_THREADS" not in env and nproc > 1:
        env["OMP_NUM_THREADS"] = "1"  # torchrun's default, so that N processes do not each take every core
    env.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", _TORCHRUN_SIGNALS)
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    env.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            "ROLE_RANK": str(rank),
            "ROLE_NAME": "default",
            "LOCAL_WORLD_SIZE": str(nproc),
            "WORLD_SIZE": str(nproc),
            "GROUP_WORLD_SIZE": "1",
            "ROLE_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": main_address,
            "MASTER_PORT": str(main_port),
            "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0",
            "TORCHELASTIC_RUN_ID": "none",
            "TORCHELASTIC_USE_AGENT_STORE": "False",
            "TORCHELASTIC_ERROR_FILE": os.path.join(error_dir, str(rank), "error.json"),
        }
    )
    return env


def launch(command: Sequence[str], nproc: int, main_address: str, main_port: int) -> int:
    """Run ``python -u COMMAND`` as ``nproc`` local processes; the exit code the launcher should end with.

    0 when every process exits 0. Otherwise the code of the first process that failed (128 + the
    signal number when a signal killed it), after stopping the others.
    """
    error_dir = tempfile.mkdtemp(prefix="fabric-run-")
    run = _Run()
    previous = {signum: signal.signal(signum, run.forward) for signum in _signals()}
    try:
        for rank in range(nproc):
            os.mkdir(os.path.join(error_dir, str(rank)))
            env = worker_environment(rank, nproc, main_address, main_port, error_dir, dict(os.environ))
            # `-u` as torchrun: the output of several processes interleaves line by line as it is written
            child = subprocess.Popen(
                [sys.executable, "-u", *command],
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            run.add(rank, child)
        return run.wait()
    finally:
        run.stop()  # only does something when leaving early (an exception in this process)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _remove_tree(error_dir)


class _Run:
    """The worker processes of one launch, by pid, and how they ended."""

    def __init__(self) -> None:
        # pid -> (rank, process), for the processes still running. Holding the Popen objects matters:
        # a Popen dropped while its process runs is polled (and reaped) by the next Popen call, and
        # this class would never see that exit code.
        self.pids: dict[int, tuple[int, subprocess.Popen]] = {}

    def add(self, rank: int, process: subprocess.Popen) -> None:
        self.pids[process.pid] = (rank, process)

    def _reaped(self, pid: int, status: int) -> tuple[int, int] | None:
        """Forget a process that ended: (its rank, its exit code), or None for a pid not ours."""
        entry = self.pids.pop(pid, None)
        if entry is None:
            return None
        rank, process = entry
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        return rank, process.returncode

    def forward(self, signum: int, frame: object) -> None:
        """Pass a signal the launcher received on to every worker still running."""
        for pid in list(self.pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # exited, not reaped yet
                pass

    def wait(self) -> int:
        """Reap the workers as they exit; at the first failure stop the rest and return its code."""
        while self.pids:
            pid, status = os.waitpid(-1, 0)  # resumes by itself after a forwarded signal (PEP 475)
            ended = self._reaped(pid, status)
            if ended is None:
                continue
            rank, code = ended
            if code != 0:
                print(
                    f"[fabric] rank {rank} (pid {pid}) {_describe(code)}; stopping the other "
                    f"{len(self.pids)} process(es) of this run.",
                    file=sys.stderr,
                    flush=True,
                )
                self.stop()
                return code if code > 0 else 128 - code
        return 0

    def stop(self) -> None:
        """SIGTERM to every worker still running, SIGKILL to those still there after a grace period."""
        if not self.pids:
            return
        self.forward(signal.SIGTERM, None)
        deadline = time.monotonic() + _TERMINATE_GRACE_SECONDS
        while self.pids and time.monotonic() < deadline:
            self._reap_exited()
            time.sleep(0.02)
        self.forward(signal.SIGKILL, None)
        while self.pids:
            pid, status = os.waitpid(-1, 0)
            self._reaped(pid, status)

    def _reap_exited(self) -> None:
        for pid in list(self.pids):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._reaped(done, status)


def _describe(code: int) -> str:
    if code > 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"was killed by signal {name}"


def _signals() -> list[int]:
    return [getattr(signal, name) for name in _FORWARDED if hasattr(signal, name)]


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGKILL when the parent dies."""
    if sys.platform != "linux":
        return

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
