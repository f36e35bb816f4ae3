"""One training script, run with `lightning.fabric` or with `fabric`: the parity tests compare the numbers.

    python lightning_parity.py IMPL OUT_DIR MODE

IMPL is ``lightning`` or ``fabric`` (only the import differs). MODE is ``single`` (one process, every
precision in turn), ``spawn`` (``strategy="ddp_spawn"``, 2 processes) or ``script`` (``strategy="ddp"``,
2 processes started by re-running this script, in ``bf16-mixed``). Each process writes its losses and
final weights, exactly (as float64 lists), to ``OUT_DIR/<IMPL>_<MODE>_<precision>_<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

IMPL, OUT, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
if IMPL == "lightning":
    from lightning.fabric import Fabric
else:
    from fabric import Fabric

PRECISIONS = ("32-true", "64-true", "bf16-true", "16-true", "bf16-mixed")


def train(fabric: Fabric, precision: str) -> None:
    fabric.seed_everything(42)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=generator)
    y = (x[:, :1] * 2 - x[:, 1:2]).sin()
    loader = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.Dropout(0.25), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader)
    losses = []
    for _ in range(2):
        for xb, yb in loader:
            loss = F.mse_loss(model(xb).float(), yb.float())
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    weights = {k: v.double().flatten().tolist() for k, v in model.state_dict().items()}
    name = f"{IMPL}_{MODE}_{precision}_{fabric.global_rank}.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump({"losses": losses, "weights": weights, "world_size": fabric.world_size}, f)


def spawned(fabric: Fabric) -> None:
    train(fabric, "32-true")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if MODE == "single":
        for precision in PRECISIONS:
            fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
            fabric.launch()
            train(fabric, precision)
    elif MODE == "spawn":
        Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").launch(spawned)
    else:
        fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", precision="bf16-mixed")
        fabric.launch()
        train(fabric, "bf16-mixed")
