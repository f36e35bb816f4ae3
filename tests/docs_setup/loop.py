# What a fragment about the training loop assumes: one CPU process, a model, an optimizer, a set-up
# loader and the names the fragments use (state, step, loss, lr, train_step).
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabric import Fabric

fabric = Fabric(accelerator="cpu", devices=1)
fabric.launch()
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = fabric.setup(model, optimizer)
loader = fabric.setup_dataloaders(
    DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4)
)
step, lr = 0, 0.1


def train_step(batch: list[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    fabric.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    return loss


loss = train_step(next(iter(loader)))
state = {"model": model, "optimizer": optimizer, "loader": loader, "step": step}
