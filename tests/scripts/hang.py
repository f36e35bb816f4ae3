"""Collective mismatches, for the diagnosis tests: ``python hang.py MODE OUT_DIR`` (2 processes, 15 s timeout).

``skip``: rank 1 never calls the second all_reduce. ``shapes``: the ranks all_reduce different shapes
(run with FABRIC_DEBUG_COLLECTIVES=1). Each rank writes what it raised to ``OUT_DIR/rank{N}.json``.
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


def _skip_the_collective(out: Path, start: float) -> None:
    """Rank 1 waits here instead of calling all_reduce; the hang report must show this function."""
    while not (out / "rank0.json").exists() and time.monotonic() - start < 60:
        time.sleep(0.05)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
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
