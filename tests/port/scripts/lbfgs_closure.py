"""Test script: LBFGS, whose closure calls loss.backward(); a flat script without a __main__ block."""

import torch

torch.manual_seed(0)
weights = torch.randn(6, 1, generator=torch.Generator().manual_seed(1))
x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
y = x @ weights
model = torch.nn.Linear(6, 1)
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)


def closure():
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()  # inside the optimizer's closure
    return loss


for step in range(4):
    loss = optimizer.step(closure)
    print(f"step {step} loss {loss.item():.10f}")
