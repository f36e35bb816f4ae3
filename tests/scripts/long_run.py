"""A long run that survives pre-emption and restarts: ``python long_run.py OUT_DIR [options]``.

The loop is the README's: ``CheckpointManager.resume``, then ``manager.step(state)`` after every step.
Each process writes ``OUT_DIR/pid{rank}`` when training starts (so a test can signal it), and at the
end ``OUT_DIR/result{rank}.json``: the step it stopped at, whether it was stopped, and the weights.

Options: ``--devices N`` (2: DDP; started by ``python`` itself or ``fabric run``),
``--steps N``, ``--every N`` (save period), ``--sleep S`` (per step, so a test can signal mid-epoch),
``--kill-at STEP`` (global rank 1 SIGKILLs itself once at that step; a marker file makes it once).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric
from fabric.checkpoint.manager import CheckpointManager


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()

    fabric = Fabric(accelerator="cpu", devices=args.devices) if args.devices else Fabric(accelerator="cpu")
    fabric.launch()
    fabric.seed_everything(7)
    dataset = TensorDataset(torch.randn(256, 8), torch.randn(256, 1))
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=8, shuffle=True))
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    state = {"model": model, "optimizer": optimizer, "loader": loader}

    manager = CheckpointManager(fabric, args.out / "checkpoints", every=args.every, keep_last=2, keep_every=8)
    resumed_from = manager.resume(state)
    (args.out / f"pid{fabric.global_rank}").write_text(str(os.getpid()))
    stopped = False
    while manager.global_step < args.steps and not stopped:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            if (
                args.kill_at is not None
                and manager.global_step + 1 == args.kill_at
                and fabric.global_rank == 1
            ):
                marker = args.out / "killed-once"
                if not marker.exists():
                    marker.touch()
                    os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(args.sleep)
            if manager.step(state):
                stopped = True
                break
            if manager.global_step >= args.steps:
                break
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    result = {
        "rank": fabric.global_rank,
        "world_size": fabric.world_size,
        "step": manager.global_step,
        "stopped": stopped,
        "resumed_from": resumed_from,
        "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "weights": weights.tolist(),
        "checkpoints": [os.path.basename(p) for _, p in manager.checkpoints()],
    }
    (args.out / f"result{fabric.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
