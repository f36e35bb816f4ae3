"""Asynchronous saves in a real run: ``python async_save.py OUT_DIR STRATEGY DEVICES``.

STRATEGY is ``fsdp`` (a sharded directory) or ``ddp``/``single`` (one file written by rank 0). Each
rank writes ``OUT_DIR/rank{N}.json`` with one entry per section, then starts one more asynchronous
save that fails (the file size limit is lowered on rank 0) and exits without waiting: the process
must then exit with a non-zero code and the error's message.

The background thread of every save here is held at a gate until the training thread opens it, so
that "the parameters change while the write has not happened yet" is certain, not a matter of timing.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
from typing import Any

import torch
from torch import nn

from fabric import Fabric
from fabric.checkpoint import background
from tests.strategies.fsdp_scripts.common import (
    attempt,
    compare_state,
    data,
    fresh,
    report,
    run_sections,
    trained,
    training_state,
)

_GATE = threading.Event()
_original_run = background.AsyncSave._run


def _gated_run(self: background.AsyncSave, write: Any) -> None:
    # Test instrumentation only: hold the real write until the training thread says so.
    if not _GATE.wait(60):
        raise TimeoutError("the test never opened the gate")
    _original_run(self, write)


background.AsyncSave._run = _gated_run  # type: ignore[method-assign]


def _train(fabric: Fabric, model: Any, optimizer: Any, steps: int, seed: int) -> None:
    for step in range(steps):
        x, y = data(seed=seed + step, n=8)
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()


def _limit_file_size(limit: int | None) -> None:
    """Writes past ``limit`` bytes fail with EFBIG (``None``: restore the previous limit)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # instead of killing the process
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


def main(out_dir: str, strategy: str, devices: int) -> None:
    fabric = Fabric(accelerator="cpu", strategy="auto" if strategy == "single" else strategy, devices=devices)
    fabric.launch()
    rank = fabric.global_rank
    model, optimizer = trained(fabric, seed=1)
    ext = "" if strategy == "fsdp" else ".pt"

    def round_trip() -> dict[str, Any]:
        history = [1, 2]
        state = {"model": model, "optimizer": optimizer, "step": 3, "history": history}
        expected = training_state(model, optimizer)
        sync_path, async_path = os.path.join(out_dir, f"sync{ext}"), os.path.join(out_dir, f"async{ext}")
        _GATE.clear()
        fabric.save(sync_path, state)
        pending = fabric.save(async_path, state, async_save=True)
        assert pending is not None
        held = not pending.done() if (rank == 0 or strategy == "fsdp") else True
        # Training goes on, changing the parameters and Adam's state in place, while nothing is written yet.
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
        history.append(3)
        _train(fabric, model, optimizer, steps=1, seed=200)
        _GATE.set()  # the write starts now, and the loop runs on alongside it
        _train(fabric, model, optimizer, steps=3, seed=300)
        results: dict[str, Any] = {"held": held}
        for name, path in (("async", async_path), ("sync", sync_path)):
            target_model, target_optimizer = fresh(fabric)
            remainder = fabric.load(path, {"model": target_model, "optimizer": target_optimizer})
            results[name] = compare_state(target_model, target_optimizer, expected)
            results[name]["rest"] = {"step": remainder.get("step"), "history": remainder.get("history")}
        results["pending_done"] = pending.done()
        return results

    def next_save_waits() -> dict[str, Any]:
        _GATE.set()
        first, second = os.path.join(out_dir, f"first{ext}"), os.path.join(out_dir, f"second{ext}")
        pending = fabric.save(first, {"model": model, "tag": "first"}, async_save=True)
        fabric.save(second, {"model": model, "tag": "second"}, async_save=True)
        assert pending is not None
        done_after_next = pending.done()
        fabric.wait_for_checkpoint()
        return {
            "first_done_when_second_started": done_after_next,
            "tags": [fabric.load(p)["tag"] for p in (first, second)],
        }

    def failure_at_next_call() -> dict[str, Any]:
        _GATE.set()
        path = os.path.join(out_dir, f"failing{ext}")
        fabric.save(path, {"model": model, "tag": "old"})
        if rank == 0:
            _limit_file_size(512)
        try:
            fabric.save(path, {"model": model, "tag": "new"}, async_save=True)
            _train(fabric, model, optimizer, steps=1, seed=400)
            raised = attempt(fabric.wait_for_checkpoint)
        finally:
            if rank == 0:
                _limit_file_size(None)
        again = attempt(fabric.wait_for_checkpoint)  # the error was raised once; nothing is pending now
        return {"raised": raised, "again": again, "tag": fabric.load(path)["tag"]}

    results = run_sections(
        {"round_trip": round_trip, "next_save_waits": next_save_waits, "failure": failure_at_next_call}
    )
    report(out_dir, rank, results)

    # An error nobody waited for must not be lost: exit non-zero with its message.
    if rank == 0:
        _limit_file_size(512)
    fabric.save(os.path.join(out_dir, f"at_exit{ext}"), {"model": model}, async_save=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
