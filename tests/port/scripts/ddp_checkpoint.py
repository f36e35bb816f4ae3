"""Test script: DDP under torchrun that saves on rank 0 and resumes from its own checkpoint (``--resume``)."""

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    dist.init_process_group(backend="gloo")
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if args.resume:
        state = torch.load("ddp.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"] + 1
    generator = torch.Generator().manual_seed(100 * dist.get_rank() + start)
    for step in range(start, start + 2):
        x = torch.randn(8, 4, generator=generator)
        loss = (model(x) - x.mean(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"rank {dist.get_rank()} step {step} loss {loss.item():.8f}")
    if dist.get_rank() == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, "ddp.pt")
    weight = next(model.parameters()).detach()
    print(f"rank {dist.get_rank()} weight sum {weight.sum().item():.10f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
