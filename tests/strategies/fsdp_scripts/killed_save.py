"""A save killed halfway must leave the previous checkpoint in place.

``python killed_save.py OUT_DIR``: two FSDP ranks save checkpoint A of a ~200 MB model to
``OUT_DIR/checkpoint``, write ``OUT_DIR/A_saved``, change every parameter, and save B to the same
path. The test watches the directory B is being written into and SIGKILLs rank 1 (its pid is in
``OUT_DIR/rank1.pid``) while its shard is being written; the run then ends with an error.
:func:`run` also serves ``tests/checkpoint/scripts/killed_async_save.py`` (B saved with ``async_save``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric

WIDTH = 2048
LAYERS = 12  # 12 x 2048 x 2048 float32: about 200 MB, 100 MB per rank


def big_model(layers: int = LAYERS) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)))


def run(out_dir: str, layers: int = LAYERS, async_save: bool = False) -> None:
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=2)
    fabric.launch()
    Path(out_dir, f"rank{fabric.global_rank}.pid").write_text(str(os.getpid()))
    model = fabric.setup_module(big_model(layers))
    path = os.path.join(out_dir, "checkpoint")
    fabric.save(path, {"model": model, "tag": "A"})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    fabric.barrier()
    if fabric.global_rank == 0:
        Path(out_dir, "A_saved").write_text("")
    if async_save:
        pending = fabric.save(path, {"model": model, "tag": "B"}, async_save=True)
        assert pending is not None
        while not pending.done():  # "training": the parameters change while B is written
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.mul_(1.0001)
        fabric.wait_for_checkpoint()
    else:
        fabric.save(path, {"model": model, "tag": "B"})
    Path(out_dir, f"B_saved_rank{fabric.global_rank}").write_text("")


if __name__ == "__main__":
    run(sys.argv[1])
