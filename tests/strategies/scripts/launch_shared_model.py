"""A model passed to ``fabric.launch(fn, model)`` under ``ddp_spawn``: ``python launch_shared_model.py OUT``.

``spawn`` hands CPU tensors to the children through shared memory. Rank 1 writes into its copy of the
weights; after a barrier rank 0 reports whether it saw that write (it must not: each process owns its
weights), whether its parameters and buffer are still in shared memory, whether the tied weights are
still one tensor, and whether a plain tensor argument stays shared (as in Lightning). Writes JSON to OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fabric import Fabric


class TiedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.tied_layer = nn.Linear(2, 2)
        self.tied_layer.weight = self.layer.weight
        self.register_buffer("buffer", torch.ones(3))


def check(fabric: Fabric, tensor: torch.Tensor, model: TiedModel) -> dict[str, Any]:
    before = model.layer.weight.detach().clone()
    fabric.barrier()
    if fabric.global_rank == 1:
        with torch.no_grad():
            model.layer.weight.add_(100.0)
            model.buffer.add_(100.0)
    fabric.barrier()
    return {
        "own_weights": bool(torch.equal(model.layer.weight.detach(), before)),
        "own_buffer": bool(torch.equal(model.buffer, torch.ones(3))),
        "weight_shared": model.layer.weight.is_shared(),
        "buffer_shared": model.buffer.is_shared(),
        "still_tied": model.layer.weight.data_ptr() == model.tied_layer.weight.data_ptr(),
        "tensor_shared": tensor.is_shared(),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn")
    result = fabric.launch(check, torch.rand(4), TiedModel())
    out.write_text(json.dumps(result))
