# `train.py` for the commands that start two processes: a script with `Fabric(devices=2)` that trains
# a step under DDP and checks that it ran as one of two ranks.
import torch

from fabric import Fabric

fabric = Fabric(accelerator="cpu", devices=2)
fabric.launch()
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = fabric.setup(model, optimizer)
fabric.backward(model(torch.randn(8, 4)).sum())
optimizer.step()
assert fabric.world_size == 2, fabric.world_size
fabric.print(f"trained on {fabric.world_size} processes")
