"""Runs in which one rank fails, for the exit-code tests: ``python exit_codes.py MODE``.

``late``: 2-process DDP started by ``python`` itself; rank 0 finishes, then rank 1 raises.
``spawn``: ``ddp_spawn``; rank 1 raises at once while rank 0 computes for a minute without a collective.
``raise``: started by torchrun or srun (the environment says who we are); rank 1 raises.
"""

from __future__ import annotations

import sys
import time

import torch

from fabric import Fabric


def spawned(fabric: Fabric) -> None:
    fabric.barrier()
    if fabric.global_rank == 1:
        raise RuntimeError("deliberate failure on rank 1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # no collective: only the launcher can end this
        torch.randn(32, 32) @ torch.randn(32, 32)
        time.sleep(0.01)


def main() -> None:
    mode = sys.argv[1]
    if mode == "spawn":
        Fabric(accelerator="cpu", strategy="ddp_spawn", devices=2).launch(spawned)
        return
    fabric = Fabric(accelerator="cpu", devices=2) if mode == "late" else Fabric(accelerator="cpu")
    fabric.launch()
    fabric.barrier()
    if fabric.global_rank == 1:
        if mode == "late":
            time.sleep(3)  # rank 0 has finished (and left) by now
        raise RuntimeError("deliberate failure on rank 1")


if __name__ == "__main__":
    main()
