"""A training script written for Lightning Fabric. The test runs it as is, and with only its imports changed
from `lightning.fabric` to `fabric`, and compares what the two print and log."""

import os
import sys

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric, seed_everything
from lightning.fabric.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

out = sys.argv[1]
fabric = Fabric(accelerator="cpu", devices=1, precision="32-true", loggers=CSVLogger(out, name="run"))
fabric.launch()
seed_everything(7)

x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
loader = fabric.setup_dataloaders(DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
model, optimizer = fabric.setup(model, optimizer)

step = 0
for epoch in range(3):
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb)
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad()
        fabric.log_dict({"loss": loss, "epoch": epoch}, step=step)
        step += 1
    mean = fabric.all_reduce(loss.detach(), reduce_op="mean")
    fabric.print(f"epoch {epoch} loss {mean.item():.8f}")

path = os.path.join(out, "state.ckpt")
fabric.save(path, {"model": model, "optimizer": optimizer, "step": step})
state = {"model": model, "optimizer": optimizer, "step": 0}
fabric.load(path, state)
fabric.print(f"restored step {state['step']}")
fabric.logger.finalize("success")
