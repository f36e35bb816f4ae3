"""A script that ends right after a collective, on a machine too busy to let gloo finish: ``torchrun ... MODE``.

MODE ``raw`` wraps the model in torch's ``DistributedDataParallel`` itself; ``fabric`` sets it up with
``Fabric(strategy="ddp")`` in the same process group (fabric finds and reuses it). Both end the way
training scripts end: a step, a barrier, ``dist.destroy_process_group()``, return.

The last collective's work is freed on gloo's worker thread once it has run; when what it holds needs
Python's lock to be freed (here a tensor with Python state; in real runs what ``backward`` leaves on DDP's
all-reduce), that thread waits for the lock. If the main thread keeps the lock until the interpreter
finalizes (a busy machine that never schedules the worker in time does this by chance;
``sys.setswitchinterval`` does it every time here), the worker then finds the interpreter gone and the
process aborts: "terminate called without an active exception", exit code -6. Fabric's exit step
(``fabric/strategies/parallel.py``: ``_leave_process_group``) lets gloo's threads finish first.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F


def main(mode: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    if mode == "raw":
        model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(module)
    else:
        from fabric import Fabric

        fabric = Fabric(accelerator="cpu", strategy="ddp", devices=dist.get_world_size())
        fabric.launch()
        model = fabric.setup(module)
    F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 0, 1])).backward()
    group = dist.distributed_c10d._get_default_group()
    dist.barrier()
    dist.destroy_process_group()  # the model's DDP reducer keeps its own reference to the group
    # From here on the main thread keeps Python's lock, except inside calls that release it themselves.
    sys.setswitchinterval(100.0)
    tensor = torch.ones(1 << 16)
    tensor.tag = "python state"  # freeing this tensor needs Python's lock
    work = group.allreduce([tensor])
    del tensor, work, group  # gloo's worker thread holds the last references now
    print(f"{mode}: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
