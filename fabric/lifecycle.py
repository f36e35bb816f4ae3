"""The life of a process in a run, in one place: set-up, signals, exit, failure, teardown.

Every part that has to act when a process starts or ends asks this module instead of replacing
``sys.excepthook`` or calling ``atexit.register`` itself, so the order of what happens at exit is
written down once, here:

1. **Set-up** (:func:`install`, called by a launcher or a strategy when a multi-process run starts):
   one ``sys.excepthook`` wrapper (it only records that the process is failing, then calls the
   previous hook) and one ``atexit`` handler; a process that runs alone gets only the ``atexit``
   handler, when its first exit step is registered. Steps and explainers of an object (a ``Fabric``,
   a strategy) are held weakly, so the registry never keeps a dropped ``Fabric`` alive. :func:`watch_signals` adds the pre-emption handlers.
2. **Signals** (``SIGUSR1``, ``SIGTERM``: what SLURM with ``--signal``, Kubernetes and torchrun send
   before they kill a job): the handler only records the signal. The training loop asks
   ``fabric.should_stop`` at a safe point; the strategy agrees on the answer across ranks. A second
   ``SIGTERM`` ends the process as if no handler were installed (a launcher that gives up waiting).
3. **Normal exit**: the exit steps run in the order of their ``order`` numbers:
   :data:`FINISH_CHECKPOINTS` (wait for an asynchronous save; a failed one sets a non-zero exit code),
   :data:`FREE_REPLACED_CHECKPOINTS` (finish deleting the checkpoints that saves replaced or rotated),
   :data:`LEAVE_PROCESS_GROUP` (meet the other ranks for a few seconds at most, then destroy the
   process group; ``Fabric._teardown``), then :data:`STOP_CHILDREN` (a launcher waits for the
   processes it started). A step that learns that another process failed (a child's exit code)
   calls :func:`fail_exit`, and the process exits with that code instead of 0.
4. **Exit after an exception**: the excepthook (or the launcher that caught the exception, where no
   excepthook runs) calls :func:`mark_failed`; the explainers registered with :func:`on_failure`
   add what they know to the error before it is printed (the strategy: where every rank was, when a
   collective that torch itself ran, such as DDP's gradient all-reduce, timed out); the steps then
   skip every wait on other processes (they are still training and would never come) and the
   launcher stops its children at once.
5. **Teardown of child processes**: the launcher's :data:`STOP_CHILDREN` step.

Environment variables are written only at set-up, by whoever owns the value, never when a property
is read: a launcher writes the rendezvous (``MASTER_ADDR``/``MASTER_PORT``, ranks) into the
environment of the processes it starts; a parallel strategy publishes ``MASTER_ADDR``/``MASTER_PORT``
in its own process when it creates the process group (as Lightning does, for code that reads them) and
restores the previous values at teardown; ``seed_everything`` writes ``PL_GLOBAL_SEED`` (Lightning's
contract with dataloader workers); ``limit_threads`` writes ``OMP_NUM_THREADS`` for the children;
``fabric run`` writes the ``FABRIC_*`` options for the script.

Processes that end without running ``atexit`` (``multiprocessing``'s fork children) call
:func:`shutdown` themselves; it runs the steps once, whoever calls it first.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

#: exit step: finish a checkpoint still being written in the background (it may need the process group)
FINISH_CHECKPOINTS = 5
#: exit step: finish freeing the space of replaced checkpoints (after the last save has committed)
FREE_REPLACED_CHECKPOINTS = 6
#: exit step: meet the other ranks (unless failing), then destroy the process group
LEAVE_PROCESS_GROUP = 10
#: exit step: wait for (or, after a failure, stop) the processes this process started
STOP_CHILDREN = 20

#: the working directory when fabric was imported: the launcher re-runs the user's command from here,
#: even if the script changed directory before ``launch()``. One ``getcwd`` call, no other import-time work.
STARTUP_CWD = os.getcwd()

_STOP_SIGNALS = ("SIGUSR1", "SIGTERM")
_log = logging.getLogger(__name__)


class _State:
    """What this process knows about its own life; one instance, module-level."""

    def __init__(self) -> None:
        self.installed = False
        self.atexit_registered = False
        self.failed = False
        self.exit_code = 0
        self.stop_signal: int | None = None
        # each step as a getter: a strong one, or a weakref.WeakMethod (None once its object is freed)
        self.steps: list[tuple[int, int, Callable[[], Callable[[], None] | None]]] = []
        self.explainers: list[weakref.WeakMethod | Callable[[], Any]] = []
        self.shut_down = False
        self.signals_watched = False
        self.lock = threading.Lock()


_state = _State()


# ------------------------------------------------------------------------------------------- set-up
def install() -> None:
    """Install the one excepthook wrapper and the one ``atexit`` handler of this process (idempotent).

    Only a run of several processes needs the excepthook (exit steps must not wait for peers after a
    failure; explainers add what the strategy knows): one process alone keeps Python's own hook.
    """
    _install_atexit()
    if _state.installed:
        return
    _state.installed = True
    previous = sys.excepthook

    def excepthook(*exc_info: Any) -> None:
        mark_failed(exc_info[1])
        previous(*exc_info)

    sys.excepthook = excepthook


def _install_atexit() -> None:
    if not _state.atexit_registered:
        _state.atexit_registered = True
        atexit.register(shutdown)


def on_exit(step: Callable[[], None], order: int, *, weak: bool = False) -> None:
    """Run ``step`` at exit, after the steps with smaller ``order`` (see the module docstring).

    With ``weak=True`` (a bound method), the step does not keep its object alive: an object the user
    dropped (a ``Fabric`` made in a notebook cell, in a loop) is freed, and its step is skipped at exit.
    What must happen even then (leaving the process group) is registered by whoever owns it.
    """
    _install_atexit()
    held: Callable[[], Callable[[], None] | None] = (
        weakref.WeakMethod(step) if weak else (lambda: step)  # type: ignore[arg-type]
    )
    _state.steps.append((order, len(_state.steps), held))


def mark_failed(error: BaseException | None = None) -> None:
    """Record that this process is ending with an error: exit steps must not wait for other processes.

    With the ``error`` that ends it, the explainers (:func:`on_failure`) may add what they know to it
    as notes (``BaseException.add_note``): the traceback printed next shows them under the message.
    """
    _state.failed = True
    if error is None or getattr(error, "__fabric_explained__", False):
        return
    try:
        error.__fabric_explained__ = True  # type: ignore[attr-defined]
    except Exception:  # an exception type with __slots__: explain it anyway, at most once per hook
        pass
    for held in list(_state.explainers):
        explain = held()
        if explain is None:  # its strategy was freed
            continue
        try:
            note = explain(error)
        except Exception as failure:  # an explanation must never replace the error it explains
            note = f"[fabric] could not explain this error: {failure!r}"
        if note:
            error.add_note(note)


def on_failure(explain: Callable[[BaseException], str | None]) -> None:
    """Call ``explain(error)`` when this process ends with ``error``; a text it returns is added as a note.

    The strategy uses it for what only it can tell about a failure that happened outside its own
    calls, e.g. where every rank was when DDP's gradient all-reduce inside ``backward`` timed out.
    A bound method is held weakly: registering it does not keep its strategy alive.
    """
    install()
    if _explainer_index(explain) is None:
        held = weakref.WeakMethod(explain) if inspect.ismethod(explain) else (lambda: explain)
        _state.explainers.append(held)


def remove_on_failure(explain: Callable[[BaseException], str | None]) -> None:
    """Stop calling ``explain`` (at teardown of whatever registered it)."""
    index = _explainer_index(explain)
    if index is not None:
        del _state.explainers[index]


def _explainer_index(explain: Callable[[BaseException], str | None]) -> int | None:
    for index, held in enumerate(_state.explainers):
        if held() == explain:
            return index
    return None


def has_failed() -> bool:
    """Whether this process is ending with an error (an uncaught exception, or a failing rank it started)."""
    return _state.failed


def fail_exit(code: int) -> None:
    """Make this process exit with ``code`` (non-zero) at the end of :func:`shutdown`."""
    _state.failed = True
    if code and not _state.exit_code:
        _state.exit_code = code


# ------------------------------------------------------------------------------------------- signals
def watch_signals() -> None:
    """Record ``SIGUSR1``/``SIGTERM`` instead of dying at once, so the loop can save and stop.

    Only from the main thread (Python allows handlers nowhere else), and never over a handler that
    someone else installed: that one stays in charge.
    """
    if _state.signals_watched or threading.current_thread() is not threading.main_thread():
        return
    _state.signals_watched = True
    for name in _STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _on_stop_signal)


def _on_stop_signal(signum: int, frame: Any) -> None:
    # No work here beyond recording: the loop acts on it at a safe point.
    if signum == getattr(signal, "SIGTERM", None) and _state.stop_signal == signum:
        signal.signal(signum, signal.SIG_DFL)  # asked twice: the sender means it
        os.kill(os.getpid(), signum)
        return
    _state.stop_signal = signum


def stop_requested() -> bool:
    """Whether this process received a stop signal (not agreed with the other ranks: see ``should_stop``)."""
    return _state.stop_signal is not None


def stop_signal() -> int | None:
    """The stop signal this process received, if any."""
    return _state.stop_signal


def request_stop(signum: int = signal.SIGUSR1) -> None:
    """Act as if ``signum`` had been received (for code that learns of a pre-emption another way)."""
    _state.stop_signal = signum


def requeue_slurm_job() -> bool:
    """Ask SLURM to requeue this job (``scontrol requeue $SLURM_JOB_ID``); whether it was asked.

    Call it on one process, after the checkpoint is saved. Outside SLURM it does nothing.
    """
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"[fabric] could not requeue SLURM job {job}: {error}", file=sys.stderr, flush=True)
        return False
    if result.returncode != 0:
        print(
            f"[fabric] `scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}",
            file=sys.stderr,
            flush=True,
        )
        return False
    print(f"[fabric] requeued SLURM job {job}", file=sys.stderr, flush=True)
    return True


# ---------------------------------------------------------------------------------------------- exit
def shutdown() -> None:
    """Run the exit steps once, in order; then exit with :func:`fail_exit`'s code if one was set."""
    with _state.lock:
        if _state.shut_down:
            return
        _state.shut_down = True
        steps = sorted(_state.steps)
        _state.steps.clear()
    for _, _, held in steps:
        step = held()
        if step is None:  # its object was freed: nothing of it is left to release
            continue
        try:
            step()
        except Exception as error:  # one failing step must not keep the others from running
            print(f"[fabric] an exit step failed: {error!r}", file=sys.stderr, flush=True)
    if _state.exit_code:
        # atexit cannot change the exit status; flush what the interpreter would flush, then end.
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(_state.exit_code)


def _reset_for_tests() -> None:
    """Forget everything (for in-process unit tests of this module only)."""
    global _state
    if _state.atexit_registered:
        atexit.unregister(shutdown)
    _state = _State()
