"""Step time around a DeepSpeed checkpoint save: none, synchronous, asynchronous (2 processes, ZeRO).

``python -m benchmarks.deepspeed_async_save OUT_DIR [STAGE] [ROUNDS]``, from the repository root, with
DeepSpeed installed and ``DS_ACCELERATOR=cpu`` on a CPU machine (as a module: run as a file,
``benchmarks/deepspeed.py`` would shadow the ``deepspeed`` package). The protocol of ``benchmarks/cases/checkpoint.py``'s
asynchronous-save figure: a 6x1024x1024 MLP with Adam (about 75 MB of model and Adam state, plus
ZeRO's fp32 master copy), batch 16, windows of 10 steps started with no save, a synchronous save or an
asynchronous one, in rotating order. Rank 0 prints one JSON line per mode: the median step time
(async: over the steps that overlap the background write), the largest step, how long the save call
held the loop, how many steps overlapped the write, and the window's total time (including the wait
for the write at its end).
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import torch
from torch import nn

from fabric import Fabric
from fabric.strategies import DeepSpeedStrategy

# The figure's helpers import each other as top-level modules; appended, not prepended, so that this
# directory's deepspeed.py does not shadow the deepspeed package.
sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from cases import checkpoint as figure


def main(out_dir: str, stage: int, rounds: int) -> None:
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", strategy=DeepSpeedStrategy(stage=stage), devices=2)
    fabric.launch()
    torch.manual_seed(0)
    module = nn.Sequential(
        *(
            nn.Sequential(nn.Linear(figure.ASYNC_WIDTH, figure.ASYNC_WIDTH), nn.ReLU())
            for _ in range(figure.ASYNC_LAYERS)
        )
    )
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters()))
    batch = torch.randn(figure.ASYNC_BATCH, figure.ASYNC_WIDTH)

    def step() -> None:
        fabric.backward(model(batch).square().mean())
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    path = os.path.join(out_dir, "checkpoint")
    results = figure.save_windows(
        fabric, step, path, {"model": model, "optimizer": optimizer, "step": 0}, rounds
    )
    if fabric.global_rank == 0:
        for mode, rows in results.items():
            summary = {
                key: round(statistics.median(r[key] for r in rows) * (1 if key == "overlapping" else 1000), 1)
                for key in ("median_step", "max_step", "block", "overlapping", "window")
            }
            print(json.dumps({"stage": stage, "mode": mode, "ms_or_count": summary}), flush=True)


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 2,
        int(sys.argv[3]) if len(sys.argv) > 3 else 3,
    )
