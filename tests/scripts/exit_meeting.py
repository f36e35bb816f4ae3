"""Rank 1 ends normally while rank 0 still computes: ``python exit_meeting.py OUT_DIR``.

Each rank writes ``OUT_DIR/pid{rank}`` (its pid) once the process group is up; rank 1 then writes
``OUT_DIR/done1`` and returns, rank 0 computes for two minutes without a collective. The test watches
how long rank 1's process takes to end after ``done1``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from fabric import Fabric


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2)
    fabric.launch()
    model = fabric.setup(torch.nn.Linear(2, 2))  # a set-up strategy with its process group
    fabric.barrier()
    (out / f"pid{fabric.global_rank}").write_text(str(os.getpid()))
    if fabric.global_rank == 1:
        (out / "done1").write_text(str(time.time()))
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # no collective: rank 1 waits for nobody but its exit meeting
        model(torch.randn(4, 2))
        time.sleep(0.05)


if __name__ == "__main__":
    main()
