"""Test script: bfloat16 autocast on the CPU, written by hand around the forward."""

import torch
import torch.nn.functional as F
from torch import nn


def main():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(5)
    for step in range(5):
        x = torch.randn(16, 16, generator=generator)
        y = torch.randint(0, 4, (16,), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} dtype {logits.dtype} loss {loss.item():.10f}")


if __name__ == "__main__":
    main()
