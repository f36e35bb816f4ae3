"""torch's gloo can abort a process at interpreter exit: recognise it in *reference* runs, never in ours.

A gloo worker thread that destroys a finished work (its tensors hold Python objects) after the
interpreter began to finalize calls ``pthread_exit`` while taking the GIL, and the process dies with
SIGABRT and "terminate called without an active exception" after it printed everything (seen in raw
torchrun scripts that call ``destroy_process_group``, and in Lightning's ``ddp_spawn``; a core dump shows
``ProcessGroupGloo::runLoop`` -> ``~AsyncWork`` -> ``gil_scoped_acquire`` -> ``pthread_exit``; torch's
own attempt to fix it, pytorch/pytorch#179291, was abandoned). Fabric's exit path lets those threads
finish before the interpreter ends (``fabric/strategies/parallel.py``: ``_leave_process_group``); a
yardstick we compare against (raw torch, Lightning) has no such step, so its run is repeated once when,
and only when, it ended this way.
"""

from __future__ import annotations

SIGNATURE = "terminate called without an active exception"


def aborted_at_exit_by_torch(returncode: int | None, output: str) -> bool:
    """Whether a run ended with torch's exit abort (SIGABRT directly, or reported by torchrun/spawn)."""
    return returncode not in (0, None) and SIGNATURE in output
