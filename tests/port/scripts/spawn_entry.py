"""Test script: a spawn entry point whose process group has an address of its own (left as is by the tool)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world_size):
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29999", rank=rank, world_size=world_size)
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    if rank == 0:
        print(f"sum {value.item()}")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29999")
    mp.spawn(worker, args=(2,), nprocs=2)
