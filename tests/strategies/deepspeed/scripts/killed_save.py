"""A DeepSpeed save killed halfway must leave the previous checkpoint in place.

``python killed_save.py OUT_DIR [async]``: two ZeRO-2 ranks save checkpoint A of a ~100 MB model (with
ZeRO's fp32 master partitions) to ``OUT_DIR/checkpoint``, write ``OUT_DIR/A_saved``, take one SGD step, and
save B to the same path (with ``async``: in the background, while training goes on). The test watches
the directory B is being written into and SIGKILLs rank 1 (its pid is in ``OUT_DIR/rank1.pid``) while
its optimizer partition is being written; the run then fails.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric
from fabric.strategies import DeepSpeedStrategy

WIDTH = 1024
LAYERS = 24  # 24 x 1024 x 1024 float32: about 100 MB; each rank writes its ~50 MB fp32 partition


def big_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS)))


def main(out_dir: str, async_save: bool = False) -> None:
    # a short timeout: rank 0 must not wait long for the killed rank 1
    strategy = DeepSpeedStrategy(stage=2, timeout=timedelta(seconds=60))
    fabric = Fabric(accelerator="cpu", strategy=strategy, devices=2)
    fabric.launch()
    Path(out_dir, f"rank{fabric.global_rank}.pid").write_text(str(os.getpid()))
    model = big_model()
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.5))
    path = os.path.join(out_dir, "checkpoint")
    fabric.save(path, {"model": model, "optimizer": optimizer, "tag": "A"})
    # one step changes the weights (and ZeRO's fp32 master copy, which is what the checkpoint holds)
    fabric.backward(model(torch.ones(2, WIDTH)).square().mean())
    optimizer.step()
    if fabric.global_rank == 0:
        Path(out_dir, "A_saved").write_text("")
    fabric.save(path, {"model": model, "optimizer": optimizer, "tag": "B"}, async_save=async_save)
    if async_save:
        for _ in range(3):  # training goes on (changing the weights in place) while B is written
            fabric.backward(model(torch.ones(2, WIDTH)).square().mean())
            optimizer.step()
        fabric.wait_for_checkpoint()
    Path(out_dir, f"B_saved_rank{fabric.global_rank}").write_text("")


if __name__ == "__main__":
    main(sys.argv[1], async_save=sys.argv[2:] == ["async"])
