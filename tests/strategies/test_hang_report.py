"""The hang report's protocol on a real TCPStore, in one process (the end-to-end run is in test_long_runs)."""

from __future__ import annotations

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
    assert "rank 2: no answer within 3 s (the process is dead, or stuck in C code" in first
