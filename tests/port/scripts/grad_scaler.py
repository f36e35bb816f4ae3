"""Test script: float16 autocast with a hand-written GradScaler and gradient clipping on the CPU.

Step 2's input is large enough that the scaled float16 gradients overflow: the scaler skips that step
and halves its scale, which the printed norm and weights of the converted script must show too.
"""

import torch
from torch import nn


def main():
    torch.manual_seed(2)
    model = nn.Linear(12, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    generator = torch.Generator().manual_seed(9)
    for step in range(5):
        x = torch.randn(8, 12, generator=generator) * (1e3 if step == 2 else 1.0)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        # clip the true gradients, not the scaled ones
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        print(
            f"step {step} loss {loss.item():.8f} norm {norm.item():.6f} weight {model.weight.sum().item():.8f}"
        )
    torch.save(model.state_dict(), "model.pt")


if __name__ == "__main__":
    main()
