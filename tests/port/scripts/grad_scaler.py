"""Test script: float16 autocast with a hand-written GradScaler and gradient clipping on the CPU."""

import torch
from torch import nn


def main():
    torch.manual_seed(2)
    model = nn.Linear(12, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    generator = torch.Generator().manual_seed(9)
    for step in range(4):
        x = torch.randn(8, 12, generator=generator)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        print(f"step {step} loss {loss.item():.8f}")
    torch.save(model.state_dict(), "model.pt")


if __name__ == "__main__":
    main()
