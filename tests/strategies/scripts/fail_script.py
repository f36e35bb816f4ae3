"""A 2-process DDP run in which one rank fails: ``python fail_script.py MODE RANK OUT_DIR``.

MODE ``kill``: rank RANK sends itself SIGKILL mid-training. ``raise``: rank RANK raises mid-training.
In both, the other rank is then accumulating gradients (no collective that would notice the failure).
``timeout``: rank RANK never calls a collective that the other rank calls, under a 20 s timeout.

Every rank writes its pid to ``OUT_DIR/pid{rank}`` before training, so the test can check that no
process is left; the failing rank writes ``OUT_DIR/failed_at`` (time.time()) just before it fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric
from fabric.strategies.ddp import CollectiveError, DDPStrategy

TIMEOUT = timedelta(seconds=20)  # also bounds process-group start-up: margin for a loaded machine


def train_until_failure(fabric: Fabric, mode: str, victim: int, out_dir: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    model = fabric.setup(model)
    for step in range(100_000):
        if step == 5 and fabric.global_rank == victim:
            (out_dir / "failed_at").write_text(repr(time.time()))
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"deliberate failure on rank {victim} at step {step}")
        # From step 3 on, a long gradient accumulation: no collective that could notice the failure,
        # so only the launcher can stop the others.
        with fabric.no_backward_sync(model, enabled=step >= 3):
            loss = model(torch.randn(2, 4)).pow(2).mean()
            fabric.backward(loss)
        time.sleep(0.01)


def collective_never_reached(fabric: Fabric, victim: int, out_dir: Path) -> None:
    """The victim skips an all_reduce; the other must fail after TIMEOUT naming the collective."""
    release = out_dir / "release"
    if fabric.global_rank == victim:
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    start = time.monotonic()
    try:
        fabric.all_reduce(torch.ones(3))
        outcome = {"error": None}
    except CollectiveError as err:
        outcome = {"error": str(err), "type": type(err).__name__}
    outcome["seconds"] = time.monotonic() - start
    (out_dir / f"timeout{fabric.global_rank}.json").write_text(json.dumps(outcome))
    release.touch()


def main() -> None:
    mode, victim, out_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    strategy = DDPStrategy(timeout=TIMEOUT) if mode == "timeout" else "ddp"
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=2)
    fabric.launch()
    (out_dir / f"pid{fabric.global_rank}").write_text(str(os.getpid()))
    fabric.barrier()
    if mode == "timeout":
        collective_never_reached(fabric, victim, out_dir)
    else:
        train_until_failure(fabric, mode, victim, out_dir)


if __name__ == "__main__":
    main()
