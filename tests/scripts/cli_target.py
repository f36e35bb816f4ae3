"""Run by the `fabric run` tests: reports what a plain `Fabric()` resolved to, after a few DDP steps."""

from __future__ import annotations

import json
import os
import sys

import torch

from fabric import Fabric

kwargs = json.loads(os.environ.get("CLI_TARGET_KWARGS", "{}"))
fabric = Fabric(**kwargs)
fabric.launch()
torch.manual_seed(fabric.global_rank)  # different data on each rank; DDP must still agree
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = fabric.setup(model, optimizer)
for _ in range(3):
    fabric.backward(model(torch.randn(4, 3)).pow(2).mean())
    optimizer.step()
    optimizer.zero_grad()
weights = fabric.all_gather(model.module.weight.detach())
report = {
    "rank": fabric.global_rank,
    "world_size": fabric.world_size,
    "node_rank": fabric.node_rank,
    "strategy": type(fabric.strategy).__name__,
    "precision": fabric.strategy.precision.precision,
    "argv": sys.argv[1:],
    "agree": bool(torch.equal(weights[0], weights[-1])),
}
with open(os.path.join(os.environ["CLI_TARGET_OUT"], f"rank{fabric.global_rank}.json"), "w") as f:
    json.dump(report, f)
