"""Test script: the AMP recipe's shape, autocast and GradScaler switched by a module-level `use_amp`."""

import torch
import torch.nn.functional as F
from torch import nn

use_amp = True


def main():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=use_amp)
    generator = torch.Generator().manual_seed(4)
    for step in range(4):
        x = torch.randn(16, 10, generator=generator)
        y = torch.randint(0, 3, (16,), generator=generator)
        with torch.autocast(device_type="cpu", dtype=torch.float16, enabled=use_amp):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step} amp {use_amp} loss {loss.item():.8f}")


if __name__ == "__main__":
    main()
