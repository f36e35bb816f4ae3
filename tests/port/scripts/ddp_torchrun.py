"""Test script: DDP by hand for torchrun (process group, sampler, wrapping, rank checks, all_reduce).

Runs on one process with plain `python` too (no process group then).
"""

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def main():
    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        dist.init_process_group(backend="gloo")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.randn(96, 10, generator=generator), torch.randn(96, 1, generator=generator))
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 1))
    if distributed:
        model = DDP(model)
        sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    else:
        sampler = None
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, shuffle=sampler is None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for epoch in range(2):
        if sampler is not None:
            sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64)
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64)
        if distributed:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            world = dist.get_world_size()
            if dist.get_rank() == 0:
                print(f"epoch {epoch} world {world} loss {(total[0] / total[1]).item():.10f}")
            dist.barrier()
        else:
            print(f"epoch {epoch} world 1 loss {(total[0] / total[1]).item():.10f}")
    weight = next(model.parameters()).detach()
    print(f"rank-local weight sum {weight.sum().item():.10f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
