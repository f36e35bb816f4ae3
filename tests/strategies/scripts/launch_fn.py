"""``fabric.launch(fn)`` with the multiprocessing launcher: ``python launch_fn.py OUT_FILE STRATEGY...``.

For each strategy name (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``), one after the other in this
process and each on a fresh port, two processes train and ``launch`` returns rank 0's result (with a
tensor and a payload larger than a pipe's buffer in it). With
``raise`` as the name, rank 1 of a ``ddp_fork`` run raises instead, and what ``launch`` raised is recorded.
With ``unset``, a ``ddp_spawn`` run starts with neither MASTER_ADDR nor MASTER_PORT in this process's
environment, and what the environment holds after the launch is recorded (the launcher must give the
rendezvous to the children only).
Writes ``{name: result}`` as JSON to OUT_FILE.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fabric import Fabric
from fabric.environments import find_free_network_port


def train(fabric: Fabric, steps: int) -> dict[str, Any]:
    rank = fabric.global_rank
    torch.manual_seed(20 + rank)  # different initial weights on every rank
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(200 + rank)  # different data on every rank
    for _ in range(steps):
        x = torch.randn(8, 8, generator=generator)
        fabric.backward(nn.functional.mse_loss(model(x), x[:, :2]))
        optimizer.step()
        optimizer.zero_grad()
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = fabric.all_gather(params)
    pids = fabric.all_gather(torch.tensor(os.getpid()))
    return {
        "returned_by": rank,
        "world_size": fabric.world_size,
        "local_ranks": fabric.all_gather(torch.tensor(fabric.local_rank)).tolist(),
        "pids": pids.tolist(),
        "ranks_identical": bool(torch.equal(gathered[0], gathered[1])),
        "main_address": fabric.strategy.environment.main_address,
        "env_master_addr": os.environ.get("MASTER_ADDR"),
        "env_master_port": os.environ.get("MASTER_PORT"),
        # A tensor and a payload larger than a pipe's buffer must come back too.
        "params": params,
        "payload": list(range(100_000)),
    }


def fail_on_rank_one(fabric: Fabric) -> None:
    fabric.barrier()
    if fabric.global_rank == 1:
        raise ValueError("deliberate failure in a started rank")
    fabric.barrier()  # rank 0 waits here until the launcher stops it


def main() -> None:
    out_file = Path(sys.argv[1])
    results: dict[str, Any] = {"parent_pid": os.getpid()}
    for name in sys.argv[2:]:
        os.environ["MASTER_PORT"] = str(find_free_network_port())
        if name == "unset":
            del os.environ["MASTER_PORT"]
            os.environ.pop("MASTER_ADDR", None)
            result = Fabric(accelerator="cpu", strategy="ddp_spawn", devices=2).launch(train, 1)
            results[name] = {
                "env_master_addr": result["env_master_addr"],
                "env_master_port": result["env_master_port"],
                "parent_env_after": {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT")},
            }
            continue
        if name == "raise":
            fabric = Fabric(accelerator="cpu", strategy="ddp_fork", devices=2)
            try:
                fabric.launch(fail_on_rank_one)
                results[name] = {"raised": None}
            except Exception as err:
                results[name] = {
                    "raised": type(err).__name__,
                    "message": "".join(traceback.format_exception(err)),
                }
            continue
        fabric = Fabric(accelerator="cpu", strategy=name, devices=2)
        result = fabric.launch(train, 4)
        params, payload = result.pop("params"), result.pop("payload")
        result["params"] = {
            "type": type(params).__name__,
            "numel": params.numel(),
            "finite": bool(params.isfinite().all()),
        }
        result["payload_intact"] = payload == list(range(100_000))
        results[name] = result
    out_file.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
