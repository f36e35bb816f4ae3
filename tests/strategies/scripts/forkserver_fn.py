"""``DDPStrategy(start_method="forkserver")`` (Lightning's spelling): two processes train; rank 0 returns.

``python forkserver_fn.py OUT_FILE``.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from fabric import Fabric
from fabric.strategies import DDPStrategy


def train(fabric: Fabric) -> dict[str, object]:
    torch.manual_seed(3 + fabric.global_rank)  # different starts: DDP must make them equal
    model = nn.Linear(4, 2)
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(fabric.global_rank))
    fabric.backward(model(x).pow(2).mean())
    optimizer.step()
    gathered = fabric.all_gather(torch.cat([p.detach().flatten() for p in model.parameters()]))
    return {"world_size": fabric.world_size, "identical": bool(torch.equal(gathered[0], gathered[1]))}


if __name__ == "__main__":
    fabric = Fabric(accelerator="cpu", strategy=DDPStrategy(start_method="forkserver"), devices=2)
    result = fabric.launch(train)
    with open(sys.argv[1], "w") as file:
        json.dump(result, file)
