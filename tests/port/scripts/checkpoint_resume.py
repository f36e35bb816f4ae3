"""Test script: trains, saves model and optimizer state, and resumes from its own checkpoint.

``python checkpoint_resume.py`` trains three steps and writes ``ckpt.pt``; ``--resume`` reads it back
and trains three more. The momentum buffers make a resume without the optimizer's state visible.
"""

import argparse

import torch
from torch import nn


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    path = "ckpt.pt"
    start = 0
    if args.resume:
        checkpoint = torch.load(path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["step"] + 1
    generator = torch.Generator().manual_seed(11 + start)
    for step in range(start, start + 3):
        x = torch.randn(16, 6, generator=generator)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step} loss {loss.item():.8f} weight {model[0].weight.sum().item():.8f}")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, path)


if __name__ == "__main__":
    main()
