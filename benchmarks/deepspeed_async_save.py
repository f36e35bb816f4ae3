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
import time

import torch
from torch import nn

from fabric import Fabric
from fabric.strategies import DeepSpeedStrategy

MODES = ("no save", "sync save", "async save")
WIDTH, LAYERS, BATCH, WINDOW = 1024, 6, 16, 10


def main(out_dir: str, stage: int, rounds: int) -> None:
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", strategy=DeepSpeedStrategy(stage=stage), devices=2)
    fabric.launch()
    torch.manual_seed(0)
    module = nn.Sequential(*(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(LAYERS)))
    model, optimizer = fabric.setup(module, torch.optim.Adam(module.parameters()))
    batch = torch.randn(BATCH, WIDTH)

    def step() -> None:
        fabric.backward(model(batch).square().mean())
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    path = os.path.join(out_dir, "checkpoint")
    state = {"model": model, "optimizer": optimizer, "step": 0}
    fabric.save(path, state)  # the first save of a path pays for creating it; not measured
    fabric.save(path, state, async_save=True)  # nor the first asynchronous one (its process group)
    fabric.wait_for_checkpoint()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_index in range(rounds):
        shift = round_index % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            fabric.barrier()
            start = time.perf_counter()
            pending = None
            if mode == "sync save":
                fabric.save(path, state)
            elif mode == "async save":
                pending = fabric.save(path, state, async_save=True)
            block = time.perf_counter() - start
            times, overlapping = [], []
            for _ in range(WINDOW):
                busy = pending is not None and not pending.done()
                began = time.perf_counter()
                step()
                times.append(time.perf_counter() - began)
                if busy:
                    overlapping.append(times[-1])
            fabric.wait_for_checkpoint()
            window = time.perf_counter() - start
            measured = overlapping if mode == "async save" and overlapping else times
            results[mode].append(
                {
                    "median_step": statistics.median(measured),
                    "max_step": max(measured),
                    "block": block,
                    "overlapping": len(overlapping),
                    "window": window,
                }
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
