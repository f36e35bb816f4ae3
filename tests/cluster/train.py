"""The training script the cluster tests launch with srun, mpirun and ``fabric run``.

``python train.py OUT --num-nodes N --devices K [--strategy ddp|fsdp] [--steps S] [--every E]
[--sleep SEC] [--sleep-restarts] [--timeout SEC] [--find-unused-parameters]``: trains a small MLP with
the README's loop (``CheckpointManager.resume``, then ``manager.step`` after every step), writes ``OUT/pid{rank}`` (pid, node) once training starts and, at
the end, ``OUT/result{rank}.json`` and the final weights to ``OUT/final.ckpt``.

``python train.py OUT --load CKPT``: one plain process (no scheduler) loads ``CKPT`` and writes the weights
to ``OUT/loaded.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.checkpoint.manager import CheckpointManager
from fabric.strategies import DDPStrategy


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def _weights(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def load(out: Path, checkpoint: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=1)
    model = fabric.setup(_model())
    fabric.load(checkpoint, {"model": model})
    (out / "loaded.json").write_text(json.dumps({"weights": _weights(model)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--sleep-restarts", action="store_true", help="also sleep in a requeued run")
    parser.add_argument("--fail-rank", type=int, default=None, help="this global rank raises at step 3")
    parser.add_argument("--load", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=None, help="DDP's collective timeout, in seconds")
    parser.add_argument(
        "--find-unused-parameters",
        action="store_true",
        help="DDP(find_unused_parameters=True): DDP then keeps its first gradient buckets (no regrouping after "
        "the first step), so a resumed run sums gradients in the same order as an uninterrupted one",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.load is not None:
        load(args.out, args.load)
        return

    restart = int(os.environ.get("SLURM_RESTART_COUNT", os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    sleep = args.sleep if restart == 0 or args.sleep_restarts else 0.0
    strategy: str | DDPStrategy = args.strategy
    ddp_options: dict[str, Any] = {}
    if args.timeout is not None:
        ddp_options["timeout"] = timedelta(seconds=args.timeout)
    if args.find_unused_parameters:
        ddp_options["find_unused_parameters"] = True
    if ddp_options:
        strategy = DDPStrategy(**ddp_options)
    fabric = Fabric(accelerator="cpu", devices=args.devices, num_nodes=args.num_nodes, strategy=strategy)
    fabric.launch()
    fabric.seed_everything(7)
    dataset = TensorDataset(torch.randn(512, 8), torch.randn(512, 1))
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=8, shuffle=True))
    model = fabric.setup_module(_model())
    optimizer = fabric.setup_optimizers(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    state = {"model": model, "optimizer": optimizer, "loader": loader}
    manager = CheckpointManager(fabric, args.out / "checkpoints", every=args.every, keep_last=2)
    resumed_from = manager.resume(state)
    info = {"pid": os.getpid(), "node": fabric.node_rank, "host": socket.gethostname()}
    (args.out / f"pid{fabric.global_rank}").write_text(json.dumps(info))
    stopped = False
    while manager.global_step < args.steps and not stopped:
        for x, y in loader:
            if args.fail_rank == fabric.global_rank and manager.global_step == 3:
                raise RuntimeError(f"deliberate failure on rank {fabric.global_rank}")
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            time.sleep(sleep)
            if manager.step(state):
                stopped = True
                break
            if manager.global_step >= args.steps:
                break
    if not stopped:
        fabric.save(args.out / "final.ckpt", {"model": model})
    result = {
        "rank": fabric.global_rank,
        "world_size": fabric.world_size,
        "node": fabric.node_rank,
        "environment": type(fabric.strategy.cluster_environment).__name__,  # type: ignore[attr-defined]
        "step": manager.global_step,
        "stopped": stopped,
        "resumed_from": resumed_from,
        "restart": restart,
        "gloo_interface": os.environ.get("GLOO_SOCKET_IFNAME"),
        "slurm": {
            k: v for k, v in os.environ.items() if k in ("SLURM_JOB_NAME", "SLURM_NTASKS", "SLURM_PROCID")
        },
    }
    (args.out / f"result{fabric.global_rank}-{restart}.json").write_text(json.dumps(result))
    print(f"[train] rank {fabric.global_rank} done: {json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
