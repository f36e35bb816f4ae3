"""A training run that can be interrupted and resumed; used by the exact-resume tests.

    python resume_run.py OUT_DIR TOTAL_STEPS [STOP_AT] [--devices N]

Without STOP_AT it trains TOTAL_STEPS steps. With STOP_AT it trains STOP_AT steps, saves a checkpoint,
throws every object away, scrambles the random state, builds everything anew, loads the checkpoint
and finishes the TOTAL_STEPS. Each process writes the ids of the samples it saw and its final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fabric import Fabric, seed_everything


class NoisyDataset(Dataset):
    """Returns (id, features with random augmentation drawn in the worker, target)."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        x = torch.randn(6, generator=generator) + 0.1 * torch.randn(6)  # worker RNG: augmentation
        return index, x, x.sum(0, keepdim=True)


def build(fabric: Fabric) -> tuple:
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = fabric.setup(model, optimizer)
    loader = DataLoader(NoisyDataset(), batch_size=4, shuffle=True, num_workers=2, persistent_workers=False)
    loader = fabric.setup_dataloaders(loader)
    return model, optimizer, loader


def train(fabric: Fabric, model, optimizer, loader, state: dict, until: int, seen: list[int]) -> None:
    while state["step"] < until:
        for ids, x, y in loader:
            seen.extend(ids.tolist())
            loss = F.mse_loss(model(x), y) + 0.01 * random.random()  # python RNG in the loss too
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            state["step"] += 1
            if state["step"] == until:
                return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("total", type=int)
    parser.add_argument("stop_at", type=int, nargs="?")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--strategy", default=None)
    args = parser.parse_args()

    strategy = args.strategy or ("ddp" if args.devices > 1 else "auto")
    fabric = Fabric(accelerator="cpu", devices=args.devices, strategy=strategy)
    fabric.launch()
    seed_everything(1234, workers=True)
    model, optimizer, loader = build(fabric)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
    seen: list[int] = []
    if args.stop_at is None:
        train(fabric, model, optimizer, loader, state, args.total, seen)
    else:
        train(fabric, model, optimizer, loader, state, args.stop_at, seen)
        checkpoint = os.path.join(args.out, "ckpt.pt")
        fabric.save(checkpoint, state)
        del model, optimizer, loader, state
        torch.manual_seed(999)  # a different random state: the checkpoint must bring the right one back
        random.seed(999)
        model, optimizer, loader = build(fabric)
        state = {"model": model, "optimizer": optimizer, "loader": loader, "step": 0}
        fabric.load(checkpoint, state)
        train(fabric, model, optimizer, loader, state, args.total, seen)
    weights = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).tolist()
        for k, v in model.state_dict().items()
    }
    with open(os.path.join(args.out, f"rank{fabric.global_rank}.json"), "w") as f:
        json.dump({"seen": seen, "weights": weights, "step": state["step"]}, f)


if __name__ == "__main__":
    main()
