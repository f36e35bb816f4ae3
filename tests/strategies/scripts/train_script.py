"""A small training script: ``python train_script.py --out DIR [--strategy S] [options] [extra args...]``.

Used to check how processes come to exist: the subprocess launcher re-running it (as a file, as
``python -m``, from a subfolder, with arguments containing spaces), torchrun with two simulated nodes,
and the strategy names. Self-contained (no sibling imports) so that tests can copy it into a package.
Every rank writes ``DIR/rank{global_rank}.json``: who it is, what it was started with, whether the
ranks agree after training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric


class Model(nn.Module):
    """A regression MLP; with ``unused_branch`` a head that forward never touches (needs
    ``find_unused_parameters=True`` under DDP)."""

    def __init__(self, unused_branch: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.unused = nn.Linear(16, 2) if unused_branch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--unused-branch", action="store_true")
    parser.add_argument("--steps", type=int, default=4, help="0: only start the processes, no model")
    args, extra = parser.parse_known_args()

    fabric = Fabric(accelerator="cpu", strategy=args.strategy, devices=args.devices, num_nodes=args.num_nodes)
    fabric.launch()
    rank = fabric.global_rank

    ranks_identical, find_unused = None, None
    if args.steps:
        torch.manual_seed(10 + rank)  # different initial weights: DDP must broadcast rank 0's
        model = Model(args.unused_branch)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model, optimizer = fabric.setup(model, optimizer)
        generator = torch.Generator().manual_seed(100 + rank)  # different data on every rank
        for _ in range(args.steps):
            x = torch.randn(8, 8, generator=generator)
            loss = nn.functional.mse_loss(model(x), x[:, :2])
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = fabric.all_gather(params)
        ranks_identical = all(torch.equal(g, gathered[0]) for g in gathered)
        find_unused = getattr(model._forward_module, "find_unused_parameters", None)
    result = {
        "global_rank": rank,
        "local_rank": fabric.local_rank,
        "node_rank": fabric.node_rank,
        "world_size": fabric.world_size,
        "environment": type(fabric.strategy.environment).__name__,
        "pid": os.getpid(),
        "script": os.path.abspath(sys.argv[0]),
        "argv": sys.argv[1:],
        "extra": extra,
        "main_module": getattr(sys.modules["__main__"].__spec__, "name", None),
        "find_unused_parameters": find_unused,
        "ranks_identical": ranks_identical,
        # What rank 0 saw, as every rank received it: proves the ranks talk to each other.
        "argv_of_rank_zero": fabric.broadcast(sys.argv[1:]),
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
