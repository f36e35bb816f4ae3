"""Hang diagnosis: when a collective times out, ask every rank where it is, through the rendezvous store.

A timed-out collective only tells the rank that waited what *it* was doing. The rank that never came
is the interesting one. So every rank runs one small daemon thread (:class:`HangWatcher`) from
set-up on; it reads one counter in the process group's store about once a second (a few bytes over a
connection that already exists, off the training thread: no extra collective, nothing per step). When
a collective fails, the rank that waited bumps the counter (:meth:`HangWatcher.report`); every
watcher answers with its rank, the collective its main thread is in (number, name, shapes), and the
Python stack of its main thread (``sys._current_frames``, as ``faulthandler`` shows it, but as text we
can put in the error). The rank that waited gathers the answers for a few seconds and returns one
report. A rank that answers nothing is dead, or its interpreter is stuck in C code holding the GIL.

The store, not the process group, carries the answers: the process group is what just failed, and
gloo/nccl cannot be used again after a timeout; the store is a separate TCP server that still works.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from types import FrameType

import torch.distributed as dist

#: how often a watcher looks for a request (seconds); one store read each time, off the main thread
POLL_SECONDS = 1.0
#: how long the rank that timed out waits for the answers; a dead peer costs this much, no more
ANSWER_SECONDS = 5.0
#: how much longer than ANSWER_SECONDS the asking rank waits for the store itself before giving up on it
STORE_GRACE_SECONDS = 5.0
#: frames of each stack in the report (the innermost ones: where the rank is)
STACK_FRAMES = 12
_REQUEST_KEY = "request"
_PREFIX = "fabric/hang"


def main_thread_stack(limit: int = STACK_FRAMES) -> str:
    """The innermost ``limit`` frames of the main thread's Python stack, ``file:line in function`` each."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return "  (no Python stack: the main thread has ended)"
    return format_stack(frame, limit)


def format_stack(frame: FrameType, limit: int = STACK_FRAMES) -> str:
    """The innermost ``limit`` frames up to ``frame``, as ``traceback`` prints them."""
    return "".join(traceback.format_stack(frame)[-limit:]).rstrip()


class HangWatcher:
    """One per process: answers hang-report requests from other ranks, and makes one when asked.

    Args:
        store: the rendezvous store the process group was created with (``_get_default_store()``).
        rank: this process's global rank.
        world_size: how many ranks answer.
        where: returns what this rank is doing now, e.g. ``"in collective #2 `all_reduce` (...)"``;
            called on the watcher thread only when a report is requested.
        host: where this rank runs, e.g. ``"node rank 1, 10.0.0.2"``; published in the store at start, so
            that a report can name the node of a rank that does not answer (a node whose link went down
            answers nothing, and its address is what the user needs to go and look).
    """

    def __init__(
        self, store: dist.Store, rank: int, world_size: int, where: Callable[[], str], host: str = ""
    ) -> None:
        self._store = dist.PrefixStore(_PREFIX, store)
        self._rank = rank
        self._host = host
        self._world_size = world_size
        self._where = _hold_weakly(where)
        self._stop = threading.Event()
        self._answered = 0
        self._thread = threading.Thread(target=self._watch, name="fabric-hang-watcher", daemon=True)

    def start(self) -> None:
        if self._host:
            # once, at set-up, while the store is surely reachable: a rank cut off later cannot say it then
            with contextlib.suppress(Exception):
                self._store.set(f"host/{self._rank}", self._host)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def serves(self, rank: int, world_size: int) -> bool:
        """Whether this watcher answers for ``rank`` of ``world_size``.

        The store is not compared: leaving the process group stops the watcher (:func:`stop_watching`), and
        a watcher whose store went away some other way has ended by itself (``running`` is false).
        """
        return self._rank == rank and self._world_size == world_size

    def stop(self) -> None:
        """Stop answering (at teardown, before the process group and its store go away).

        Waits for the thread to leave: a thread still inside a store call when the store is destroyed
        aborts the process at exit ("terminate called without an active exception").
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * POLL_SECONDS + 5)

    # ------------------------------------------------------------------------------ answering
    def _watch(self) -> None:
        # Any store error means the store's host (rank 0's process, or the launcher) is gone: the run
        # is ending, and there is nobody left to answer. Leave quietly.
        with contextlib.suppress(Exception):
            while not self._stop.wait(POLL_SECONDS):
                requested = self._store.add(_REQUEST_KEY, 0)
                if requested > self._answered:
                    self._answered = requested
                    self._answer(requested)

    def describe_with(self, where: Callable[[], str]) -> None:
        """Describe this rank with ``where`` from now on (the strategy set up last; held weakly)."""
        self._where = _hold_weakly(where)

    def _answer(self, request: int) -> None:
        try:
            describe = self._where()
            where = describe() if describe is not None else "(its strategy was freed)"
        except Exception as error:  # the report must not fail because one description did
            where = f"(could not describe: {error!r})"
        answer = {"request": request, "where": where, "stack": main_thread_stack()}
        self._store.set(f"answer/{self._rank}", json.dumps(answer))

    # ------------------------------------------------------------------------------- asking
    def report(self, own_where: str, own_stack: str, timeout: float = ANSWER_SECONDS) -> str:
        """Ask every other rank where it is; wait ``timeout`` seconds at most; one block per rank.

        ``own_where`` and ``own_stack`` describe this rank (the caller knows its stack best: the frames
        of the report itself would only be noise).

        The store calls run on a thread of their own, and the caller waits for it ``timeout`` plus
        :data:`STORE_GRACE_SECONDS` at most. When the network to the store's host is down, a store call
        does not fail: it waits for the store's own timeout (the process group's, often 30 minutes),
        and this process's watcher thread may already be waiting inside one, holding the store
        client's lock. The error being reported must not wait for that.
        """
        answer: list[str] = []
        asker = threading.Thread(
            target=lambda: answer.append(self._ask(own_where, own_stack, timeout)),
            name="fabric-hang-report",
            daemon=True,
        )
        asker.start()
        asker.join(timeout + STORE_GRACE_SECONDS)
        if answer:
            return answer[0]
        return (
            f"rank {self._rank} (this process): {own_where}\n{own_stack}\n(no report from the other ranks: the "
            f"rendezvous store did not answer within {timeout + STORE_GRACE_SECONDS:.0f} s; the network to the "
            "store's host, the first node, may be down)"
        )

    def _ask(self, own_where: str, own_stack: str, timeout: float) -> str:
        try:
            request = self._store.add(_REQUEST_KEY, 1)
        except Exception as error:
            return f"(no report from the other ranks: the rendezvous store is unreachable: {error!r})"
        self._answered = max(self._answered, request)  # our own entry is written below, not by our thread
        answers: dict[int, dict] = {}
        others = [rank for rank in range(self._world_size) if rank != self._rank]
        deadline = time.monotonic() + timeout
        while True:
            for rank in others:
                if rank not in answers:
                    answer = self._read(rank)
                    if answer is not None and answer["request"] >= request:
                        answers[rank] = answer
            if len(answers) == len(others) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        blocks = [f"rank {self._rank} (this process): {own_where}\n{own_stack}"]
        silent: dict[str, list[int]] = {}  # host -> the ranks on it that did not answer
        for rank in others:
            if rank in answers:
                blocks.append(f"rank {rank}: {answers[rank]['where']}\n{answers[rank]['stack']}")
                continue
            host = self._host_of(rank)
            silent.setdefault(host, []).append(rank)
            blocks.append(
                f"rank {rank}{f' ({host})' if host else ''}: no answer within {timeout:.0f} s (the process is "
                "dead, its host cannot be reached, or it is stuck in C code holding the Python interpreter)"
            )
        if any(silent):
            lost = "; ".join(
                f"{host}: rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
                for host, ranks in silent.items()
                if host
            )
            blocks.insert(
                0,
                f"No answer from {lost}. When every rank of a node is silent, that node's processes died "
                "or its network link is down.",
            )
        return "\n".join(blocks)

    def _host_of(self, rank: int) -> str:
        """Where ``rank`` runs, as it published at start ("" when it did not)."""
        with contextlib.suppress(Exception):
            key = f"host/{rank}"
            if self._store.check([key]):
                return self._store.get(key).decode()
        return ""

    def _read(self, rank: int) -> dict | None:
        key = f"answer/{rank}"
        with contextlib.suppress(Exception):
            if self._store.check([key]):
                return json.loads(self._store.get(key))
        return None


def _hold_weakly(where: Callable[[], str]) -> Callable[[], Callable[[], str] | None]:
    """A bound method is held weakly: the watcher thread must not keep a dropped strategy alive."""
    if hasattr(where, "__self__") and hasattr(where, "__func__"):
        return weakref.WeakMethod(where)  # type: ignore[arg-type]
    return lambda: where


# One watcher per process, whatever the number of strategies set up in it (a script may build several
# Fabrics on the one process group): they would all answer the same requests.
_watcher: HangWatcher | None = None
_watcher_lock = threading.Lock()


def watch(
    store: dist.Store, rank: int, world_size: int, where: Callable[[], str], host: str = ""
) -> HangWatcher:
    """The process's running watcher (started on first use); ``where`` describes this rank from now on;
    ``host`` names its node for the reports of other ranks (see :class:`HangWatcher`)."""
    global _watcher
    with _watcher_lock:
        if _watcher is not None and _watcher.running and _watcher.serves(rank, world_size):
            _watcher.describe_with(where)
            return _watcher
        if _watcher is not None:
            _watcher.stop()
        _watcher = HangWatcher(store, rank, world_size, where, host)
        _watcher.start()
        return _watcher


def stop_watching() -> None:
    """Stop the process's watcher and wait for its thread (before the process group and its store go).

    Called when the process group is left, also by the exit step that runs when every ``Fabric`` was
    freed first. A daemon thread still inside a store call at interpreter exit is ended by the
    interpreter mid-C++-call, and the process aborts ("terminate called without an active exception").
    """
    global _watcher
    with _watcher_lock:
        watcher, _watcher = _watcher, None
    if watcher is not None:
        watcher.stop()
