"""Train a small classifier on generated data with Fabric: the project's main job.

The data are three interleaved spirals in 2-D (made here, no download), the model a small MLP.
Runs on CPU in a few seconds; the same script runs on several processes or GPUs by changing flags:

    python examples/train_classifier.py
    python examples/train_classifier.py --devices 2               # two processes, DDP over gloo
    python examples/train_classifier.py --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric, seed_everything


def make_spirals(n_per_class: int = 1000, classes: int = 3, noise: float = 0.15) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    points, labels = [], []
    for c in range(classes):
        r = torch.linspace(0.05, 1.0, n_per_class)
        theta = torch.linspace(c * 2 * math.pi / classes, c * 2 * math.pi / classes + 4.0, n_per_class)
        theta = theta + noise * torch.randn(n_per_class, generator=generator)
        points.append(torch.stack([r * torch.sin(theta), r * torch.cos(theta)], dim=1))
        labels.append(torch.full((n_per_class,), c))
    return TensorDataset(torch.cat(points), torch.cat(labels))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, cuda, mps or auto (default: %(default)s)")
    parser.add_argument(
        "--strategy", default="auto", help="a strategy name, e.g. ddp or fsdp (default: %(default)s)"
    )
    parser.add_argument("--devices", default="1", help="processes/devices to run on (default: %(default)s)")
    parser.add_argument(
        "--precision",
        default="32-true",
        help="numeric precision, e.g. 32-true or bf16-mixed (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs", type=int, default=20, help="passes over the training data (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="samples per step on each process (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate (default: %(default)s)")
    parser.add_argument(
        "--checkpoint",
        default=os.path.join("out", "classifier.ckpt"),
        help="where the checkpoint is written and resumed from (default: %(default)s)",
    )
    args = parser.parse_args()

    fabric = Fabric(
        accelerator=args.accelerator, strategy=args.strategy, devices=args.devices, precision=args.precision
    )
    fabric.launch()
    seed_everything(42)

    dataset = make_spirals()
    train_set, val_set = torch.utils.data.random_split(
        dataset, [0.8, 0.2], generator=torch.Generator().manual_seed(0)
    )
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=256)
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model, optimizer = fabric.setup(model, optimizer)

    for epoch in range(args.epochs):
        model.train()
        total_loss = torch.zeros(2, device=fabric.device)
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            total_loss += torch.stack([loss.detach() * len(y), torch.tensor(len(y), device=fabric.device)])
        total_loss = fabric.all_reduce(total_loss, reduce_op="sum")

        model.eval()
        correct = torch.zeros(2, device=fabric.device)
        with torch.no_grad():
            for x, y in val_loader:
                correct += torch.stack(
                    [(model(x).argmax(1) == y).sum(), torch.tensor(len(y), device=fabric.device)]
                )
        correct = fabric.all_reduce(correct, reduce_op="sum")
        fabric.print(
            f"epoch {epoch + 1:3d}/{args.epochs}  train loss {total_loss[0] / total_loss[1]:.4f}  "
            f"val accuracy {correct[0] / correct[1]:.3f}"
        )

    fabric.save(args.checkpoint, {"model": model, "optimizer": optimizer, "epoch": args.epochs})
    fabric.print(f"saved {args.checkpoint}")
    accuracy = (correct[0] / correct[1]).item()
    if accuracy < 0.9:
        raise SystemExit(f"validation accuracy {accuracy:.3f} is below 0.9: training did not converge")


if __name__ == "__main__":
    main()
