"""Test script: a device picked by hand (with a --no-cuda flag), .to(device) and guarded .cuda() moves."""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--no-cuda", action="store_true")
parser.add_argument("--steps", type=int, default=5)


def main():
    args = parser.parse_args()
    use_cuda = not args.no_cuda and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")  # the device, by hand
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).to(device)
    if torch.cuda.is_available():
        model = model.cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    target = data.sum(1, keepdim=True)
    for step in range(args.steps):
        x, y = data.to(device), target.to(device)
        if torch.cuda.is_available():
            x = x.cuda(non_blocking=True)
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.10f}")


if __name__ == "__main__":
    main()
