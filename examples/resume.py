"""Exact resume: stop a run anywhere (Ctrl-C, a crash, a pre-empted job) and continue as if it never stopped.

    python examples/resume.py                 # trains, checkpointing every 10 steps
    python examples/resume.py --stop-at 37    # simulate a crash after step 37
    python examples/resume.py                 # resumes from the last checkpoint, ends identical
    python examples/resume.py --devices 2     # the same on two DDP processes

What makes the resumed run repeat the uninterrupted one bit for bit:
- the dataloader set up by Fabric is passed in the saved state: it records its epoch, its position in
  the epoch and the random state the epoch's shuffle and worker seeds came from;
- ``fabric.save`` stores the random state of every process by itself, and ``fabric.load`` restores it;
- the checkpoint is written atomically, so a crash during the save leaves the previous one.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric, seed_everything


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--devices", type=int, default=1, help="processes/devices to run on (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=60, help="optimizer steps to train (default: %(default)s)"
    )
    parser.add_argument("--stop-at", type=int, default=None, help="exit after this step, as a crash would")
    parser.add_argument(
        "--checkpoint",
        default=os.path.join("out", "resume.ckpt"),
        help="where the checkpoint is written and resumed from (default: %(default)s)",
    )
    args = parser.parse_args()

    fabric = Fabric(accelerator="cpu", devices=args.devices)
    fabric.launch()
    seed_everything(7, workers=True)

    data = torch.randn(512, 10)
    dataset = TensorDataset(data, data.sum(1, keepdim=True))
    loader = fabric.setup_dataloaders(DataLoader(dataset, batch_size=16, shuffle=True, num_workers=2))
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 32), torch.nn.Dropout(0.1), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = fabric.setup(model, optimizer)

    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    if os.path.exists(args.checkpoint):
        fabric.load(args.checkpoint, state)
        fabric.print(f"resumed from {args.checkpoint} at step {state['step']}")

    while state["step"] < args.steps:
        for x, y in loader:
            loss = F.mse_loss(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            state["step"] += 1
            if state["step"] % 10 == 0:
                fabric.save(args.checkpoint, state)
                fabric.print(f"step {state['step']:3d}  loss {loss.item():.4f}  (checkpoint saved)")
            if state["step"] == args.stop_at:
                fabric.print(f"stopping at step {state['step']}, as a crash would")
                return
            if state["step"] == args.steps:
                break
    fabric.print(f"done: weight checksum {sum(p.double().sum().item() for p in model.parameters()):.10f}")


if __name__ == "__main__":
    main()
