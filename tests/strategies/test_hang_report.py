"""The hang report's protocol on a real TCPStore, in one process (the end-to-end run is in test_long_runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from fabric.environments import find_free_network_port
from fabric.strategies.hang_report import HangWatcher


def _store() -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", find_free_network_port(), is_master=True, timeout=timedelta(seconds=10))


@pytest.mark.timeout(60)
def test_every_rank_answers_with_its_collective_and_stack() -> None:
    store = _store()
    asking = HangWatcher(store, 0, 3, lambda: "unused")
    watchers = [
        HangWatcher(store, 1, 3, lambda: "in collective #3 (`all_reduce`, tensors (2,) float32)"),
        HangWatcher(store, 2, 3, lambda: "not in a collective (it has called 2 so far)"),
    ]
    for watcher in watchers:
        watcher.start()
    try:
        report = asking.report("in collective #3 (`barrier`, no tensors)", "  File x.py, line 1", timeout=30)
    finally:
        for watcher in watchers:
            watcher.stop()
    assert report.startswith("rank 0 (this process): in collective #3 (`barrier`, no tensors)\n  File x.py")
    assert "rank 1: in collective #3 (`all_reduce`, tensors (2,) float32)" in report
    assert "rank 2: not in a collective (it has called 2 so far)" in report
    # the watchers run in this process: the main thread's stack is this test, waiting in `report`
    assert report.count("in test_every_rank_answers_with_its_collective_and_stack") == 2
    assert "no answer" not in report


@pytest.mark.timeout(60)
def test_a_rank_that_never_answers_is_named_and_a_second_request_gets_fresh_answers() -> None:
    store = _store()
    asking = HangWatcher(store, 0, 3, lambda: "unused")
    calls = []
    alive = HangWatcher(store, 1, 3, lambda: calls.append(1) or f"answer {len(calls)}")
    alive.start()
    try:
        first = asking.report("waiting", "", timeout=3)
        second = asking.report("waiting", "", timeout=3)
    finally:
        alive.stop()
    assert "rank 1: answer 1" in first and "rank 1: answer 2" in second
    assert (
        "rank 2: no answer within 3 s (the process is dead, its host cannot be reached, or it is stuck"
        in first
    )
    assert not first.startswith("No answer from")  # rank 2 never said where it runs: no node to name


@pytest.mark.timeout(60)
def test_a_silent_rank_is_named_with_the_node_and_address_it_published_at_start() -> None:
    """A node whose link went down answers nothing: the report names it from what it published at set-up."""
    store = _store()
    asking = HangWatcher(store, 0, 4, lambda: "unused", host="node rank 0, 198.18.0.1")
    alive = HangWatcher(
        store, 1, 4, lambda: "in collective #5 (`all_reduce`, no tensors)", "node rank 0, 198.18.0.1"
    )
    lost = [HangWatcher(store, rank, 4, lambda: "unused", host="node rank 1, 198.18.0.2") for rank in (2, 3)]
    for watcher in (alive, *lost):
        watcher.start()
    for watcher in lost:  # it published where it runs, then went silent
        watcher.stop()
    try:
        report = asking.report("waiting", "", timeout=3)
    finally:
        alive.stop()
    assert report.startswith(
        "No answer from node rank 1, 198.18.0.2: ranks 2, 3. When every rank of a node is"
    )
    assert "rank 1: in collective #5" in report
    assert "rank 2 (node rank 1, 198.18.0.2): no answer within 3 s" in report
    assert "rank 3 (node rank 1, 198.18.0.2): no answer within 3 s" in report


_STORE_SERVER = """
import sys, time
from datetime import timedelta
import torch.distributed as dist
store = dist.TCPStore("127.0.0.1", int(sys.argv[1]), is_master=True, timeout=timedelta(seconds=300))
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.timeout(150, method="thread")  # the hang this catches is inside C++: signals wait for it
def test_a_store_that_stops_answering_does_not_hold_the_report_past_its_deadline() -> None:
    """A dead link to the store's host (here: its process stopped with SIGSTOP, so the TCP connection
    stays open and nothing answers). This process's watcher thread is then stuck inside a store call,
    holding the client's lock; the report must still come back within its deadline (it waited for the
    store's own timeout, 120 s here and 30 minutes by default, before)."""
    port = find_free_network_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _STORE_SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=120))
        watcher = HangWatcher(store, 0, 2, lambda: "unused")
        watcher.start()
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(3)  # the watcher polls once a second: it is now waiting inside `store.add`
        report = watcher.report(
            "in collective #4 (`all_reduce`, tensors (3,) float32)", "  File t.py, line 9", 2
        )
        assert report.startswith(
            "rank 0 (this process): in collective #4 (`all_reduce`, tensors (3,) float32)"
        )
        assert "  File t.py, line 9" in report
        assert "the rendezvous store did not answer within 7 s" in report
        os.kill(server.pid, signal.SIGCONT)  # the stuck calls complete; the threads can be stopped
        watcher.stop()
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.kill()
        server.wait()
