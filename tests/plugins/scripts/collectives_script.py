"""Three processes split into roles as in Lightning's decoupled PPO example: rank 0 plays, ranks 1-2 train.

``python collectives_script.py OUT_DIR``; the port comes from ``MASTER_PORT``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.multiprocessing as mp

from fabric.plugins.collectives import CollectibleGroup, TorchCollective


def worker(rank: int, out_dir: str) -> None:
    world = TorchCollective()
    world.setup(
        backend="gloo",
        rank=rank,
        world_size=3,
        main_address="127.0.0.1",
        main_port=os.environ["MASTER_PORT"],
        timeout=timedelta(seconds=60),
    )
    world.create_group(timeout=timedelta(seconds=60))
    trainers = world.new_group(ranks=[1, 2], timeout=timedelta(seconds=60))
    result: dict[str, object] = {"rank": world.rank, "world_size": world.world_size}
    result["group_is_process_group"] = isinstance(world.group, CollectibleGroup)

    # player -> trainers: scatter a chunk each, then broadcast parameters back
    chunks = [None]
    world.scatter_object_list(chunks, [None, {"data": [1, 2]}, {"data": [3]}], src=0)
    result["chunk"] = chunks[0]
    summed = world.all_reduce(torch.tensor([float(rank)]), op="sum")
    result["sum"] = summed.item()
    maxed = world.all_reduce(torch.tensor([float(rank)]), op=torch.distributed.ReduceOp.MAX)
    result["max"] = maxed.item()
    if rank > 0:  # a collective on the trainers' sub-group only
        value = torch.tensor([float(rank * 10)])
        torch.distributed.all_reduce(value, group=trainers)
        result["trainers_sum"] = value.item()
    params = [torch.zeros(2) if rank else torch.tensor([1.5, 2.5])]
    world.broadcast_object_list(params, src=0)
    result["params"] = params[0].tolist()
    gathered = [None] * 3 if rank == 0 else None
    world.gather_object(rank * 2, gathered, dst=0)
    result["gathered"] = gathered
    world.barrier()
    bad = None
    try:
        world.all_reduce(torch.tensor([1.0]), op="mean")
    except ValueError as err:
        bad = str(err)
    result["bad_op"] = bad
    TorchCollective.destroy_group(trainers)
    world.teardown()
    result["default_destroyed"] = not torch.distributed.is_initialized()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=3)
