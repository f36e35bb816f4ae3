"""Test program, entry script: DDP by hand for torchrun; the training loop lives in `loop.py`.

Usage: torchrun --nproc-per-node N train.py [--epochs E] [--resume]
"""

import argparse

import torch
import torch.distributed as dist
from loop import Trainer
from torch import nn
from torch.utils.data import TensorDataset


def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, TensorDataset]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(64, 6, generator=generator), torch.randn(64, 1, generator=generator))
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, optimizer, dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    dist.init_process_group(backend="gloo")
    model, optimizer, dataset = build(seed=0)
    trainer = Trainer(model, optimizer, dataset, snapshot="snapshot.pt")
    if args.resume:
        trainer.restore()
    trainer.fit(args.epochs)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
