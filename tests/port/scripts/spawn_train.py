"""Test script: DDP training started with torch.multiprocessing.spawn (the shape of torch's DDP tutorial).

Usage: python spawn_train.py NPROCS PORT
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP


def train(model, optimizer, data, targets):
    for step in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(data), targets)
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.8f}")


def worker(rank, world_size, seed):
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(seed)
    model = DDP(torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # each process trains on its own shard, so the averaged gradients differ from one process
    generator = torch.Generator().manual_seed(100 + rank)
    data, targets = torch.randn(16, 8, generator=generator), torch.randn(16, 1, generator=generator)
    train(model, optimizer, data, targets)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(f"rank {rank} of {world_size} weights {weights.sum().item():.8f}")
    dist.destroy_process_group()


def main():
    world_size, port = int(sys.argv[1]), sys.argv[2]
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = port
    mp.spawn(worker, args=(world_size, 7), nprocs=world_size)


if __name__ == "__main__":
    main()
