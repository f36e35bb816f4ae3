"""Collective mismatches, for the diagnosis tests: ``python hang.py MODE OUT_DIR`` (2 processes, 15 s timeout).

``skip``: rank 1 never calls the second all_reduce. ``shapes``: the ranks all_reduce different shapes
(run with FABRIC_DEBUG_COLLECTIVES=1). Each rank writes what it raised to ``OUT_DIR/rank{N}.json``.
``backward-ddp``/``backward-fsdp``: rank 1 does not run the second step's backward, so rank 0's gradient
communication inside ``backward`` (torch's, not fabric's) times out; the error is left uncaught, as in
a user's loop, and the report must come with the traceback.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from fabric import Fabric
from fabric.strategies.ddp import DDPStrategy
from fabric.strategies.fsdp import FSDPStrategy


def _skip_the_collective(out: Path, start: float) -> None:
    """Rank 1 waits here instead of calling all_reduce; the hang report must show this function."""
    while not (out / "rank0.json").exists() and time.monotonic() - start < 60:
        time.sleep(0.05)


def _skip_the_backward(start: float) -> None:
    """Rank 1 waits here instead of running backward; the report on rank 0 must show this function."""
    while time.monotonic() - start < 60:
        time.sleep(0.05)


def backward(kind: str) -> None:
    timeout = timedelta(seconds=15)
    strategy = DDPStrategy(timeout=timeout) if kind == "ddp" else FSDPStrategy(timeout=timeout)
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=2)
    fabric.launch()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    for step in range(2):
        loss = model(torch.randn(2, 4)).sum()
        if step == 1 and fabric.global_rank == 1:
            _skip_the_backward(time.monotonic())
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode.startswith("backward-"):
        backward(mode.split("-", 1)[1])
        return
    fabric = Fabric(accelerator="cpu", strategy=DDPStrategy(timeout=timedelta(seconds=15)), devices=2)
    fabric.launch()
    fabric.all_reduce(torch.ones(2))
    outcome: dict = {"error": None}
    start = time.monotonic()
    try:
        if mode == "skip":
            if fabric.global_rank == 0:
                fabric.all_reduce(torch.ones(3, 2))
            else:
                _skip_the_collective(out, start)
        else:
            fabric.all_reduce(torch.ones(3 + fabric.global_rank))
    except Exception as err:
        outcome = {"error": str(err), "type": type(err).__name__}
    outcome["seconds"] = time.monotonic() - start
    (out / f"rank{fabric.global_rank}.json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    main()
