"""The port of legacy_train.py to fabric: the "after" of the porting guide (see README.md here).

The training loop is the same; fabric takes over the device, mixed precision, the processes and
the checkpoint. The same command runs on a CPU, a GPU, one process or two:

    python examples/porting/fabric_train.py
    python examples/porting/fabric_train.py --devices 2                # fabric starts the second process
    python examples/porting/fabric_train.py --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fabric import Fabric
from fabric.loggers import CSVLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from legacy_train import make_data, make_model  # the same data and model as the script we port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    parser.add_argument("--devices", default="1", help="processes/devices to run on (default: %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="passes over the training data (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples per step on each process (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--precision",
        choices=["32", "bf16-mixed", "16-mixed"],
        default="32",
        help="numeric precision, e.g. 32-true or bf16-mixed (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed, for repeatable runs (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        default=os.path.join("out", "fabric"),
        help="folder for logs, checkpoints and outputs (default: %(default)s)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    args = parser.parse_args()

    # 1-3: processes, device and precision are arguments (torchrun/SLURM are detected as well)
    fabric = Fabric(
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        loggers=CSVLogger(args.out, name=None, version="logs"),
    )
    fabric.launch()

    torch.manual_seed(args.seed)
    model = make_model()  # no .cuda(): setup moves it
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)  # DDP-wrapped when there are several processes

    # 4: a plain DataLoader; fabric adds the DistributedSampler and moves batches to the device
    loader = fabric.setup_dataloaders(DataLoader(make_data(), batch_size=args.batch_size, shuffle=True))

    # 5: one dict holds the state; load restores it in place (also the GradScaler's, by itself)
    checkpoint_path = os.path.join(args.out, "checkpoint.pt")
    state = {"model": model, "optimizer": optimizer, "epoch": 0}
    if args.resume and os.path.exists(checkpoint_path):
        fabric.load(checkpoint_path, state)

    for epoch in range(state["epoch"], args.epochs):
        model.train()
        total = torch.zeros(2, dtype=torch.float64, device=fabric.device)
        for x, y in loader:  # the sampler's epoch is set for you
            loss = F.cross_entropy(model(x), y)  # autocast happens inside the wrapped model
            fabric.backward(loss)  # scales the loss under 16-mixed
            optimizer.step()
            optimizer.zero_grad()
            total += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64, device=fabric.device)
        total = fabric.all_reduce(total, reduce_op="sum")
        fabric.print(f"epoch {epoch + 1}/{args.epochs}  loss {total[0] / total[1]:.4f}")  # rank 0 only
        fabric.log_dict({"epoch": epoch + 1, "loss": total[0] / total[1]}, step=epoch)

        # 7: one call; rank 0 writes atomically, the others wait
        state["epoch"] = epoch + 1
        fabric.save(checkpoint_path, state)
    fabric.logger.finalize("success")


if __name__ == "__main__":
    main()
