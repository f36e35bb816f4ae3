"""An asynchronous save killed halfway must leave the previous checkpoint in place.

``python killed_async_save.py OUT_DIR``: two FSDP ranks save checkpoint A of a ~67 MB model to
``OUT_DIR/checkpoint`` (synchronously), write ``OUT_DIR/A_saved``, then save B to the same path with
``async_save=True`` and train on (changing every parameter in place) while B is written in the
background. The test SIGKILLs rank 1 (its pid is in ``OUT_DIR/rank1.pid``) while its shard of B is
being written; the run then ends with an error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric

WIDTH = 2048
LAYERS = 4  # 4 x 2048 x 2048 float32: about 67 MB, 34 MB per rank


def big_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS)))


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", strategy="fsdp", devices=2)
    fabric.launch()
    Path(out_dir, f"rank{fabric.global_rank}.pid").write_text(str(os.getpid()))
    model = fabric.setup_module(big_model())
    path = os.path.join(out_dir, "checkpoint")
    fabric.save(path, {"model": model, "tag": "A"})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    fabric.barrier()
    if fabric.global_rank == 0:
        Path(out_dir, "A_saved").write_text("")
    pending = fabric.save(path, {"model": model, "tag": "B"}, async_save=True)
    assert pending is not None
    while not pending.done():  # "training": the parameters change while B is written
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1.0001)
    fabric.wait_for_checkpoint()
    Path(out_dir, f"B_saved_rank{fabric.global_rank}").write_text("")


if __name__ == "__main__":
    main(sys.argv[1])
