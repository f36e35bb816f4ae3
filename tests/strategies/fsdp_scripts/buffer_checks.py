"""BatchNorm statistics under FSDP on 2 processes: rank 0's everywhere at setup and at every save, as DDP.

Started by ``tests/strategies/test_fsdp_buffers.py`` as ``python buffer_checks.py OUT_DIR``; fabric re-runs
it for rank 1. Every rank writes ``OUT_DIR/rank{N}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from fabric import Fabric


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )


def main(out_dir: str) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy="fsdp")
    fabric.launch()
    rank = fabric.global_rank
    model = net()
    with torch.no_grad():  # per-rank statistics before setup: setup must leave rank 0's everywhere
        model[1].running_mean.fill_(float(rank + 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = fabric.setup(model, optimizer)
    bn = model.module[1]
    result: dict[str, object] = {"after_setup": bn.running_mean.tolist()}
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data: statistics drift apart
    for _ in range(2):
        loss = model(torch.randn(4, 3, 6, 6, generator=generator) * (rank + 1)).sum()
        fabric.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    result["before_save"] = bn.running_mean.tolist()
    rank0_before_save = fabric.broadcast(bn.running_mean.clone(), src=0)
    result["rank0_before_save"] = rank0_before_save.tolist()
    fabric.save(Path(out_dir) / "checkpoint", {"model": model, "optimizer": optimizer})
    result["after_save"] = bn.running_mean.tolist()
    model.eval()
    with torch.no_grad():
        result["eval_logits"] = model(torch.ones(1, 3, 6, 6)).tolist()
    fresh = net()
    fresh_model, fresh_optimizer = fabric.setup(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1))
    fabric.load(Path(out_dir) / "checkpoint", {"model": fresh_model, "optimizer": fresh_optimizer})
    result["loaded"] = fresh_model.module[1].running_mean.tolist()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    fabric.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
