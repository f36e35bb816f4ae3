"""Where a sharded ``fabric.save`` spends the time raw DCP does not: a profile of one save on rank 0.

    torchrun --nproc_per_node=4 benchmarks/profile_sharded_save.py [DIRECTORY]

Builds an FSDP2 model of 50 ``Linear(1024, 1024)`` layers (200 MB of fp32 state) with
``Fabric(strategy="fsdp")``, times three rounds of ``fabric.save`` against ``dcp.save`` of the same
model (each between two barriers, the page cache synced before each), then profiles one more
``fabric.save`` with ``cProfile`` and prints, from rank 0, the functions by cumulative time: the
CRC-32 (``zlib.crc32``), the checksumming stream's ``write``, the object collectives of the pipeline
(``gather_object``, ``broadcast``) and the fsyncs are the parts raw DCP does not have. Used for the
"Why the missed targets are missed" section of ``results.md``.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from fabric import Fabric


def main(root: str) -> None:
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), strategy="fsdp")
    fabric.launch()
    torch.manual_seed(0)
    model = fabric.setup_module(nn.Sequential(*(nn.Linear(1024, 1024) for _ in range(50))))
    rank = dist.get_rank()

    def fresh(name: str) -> str:
        path = os.path.join(root, name)
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.sync()
        dist.barrier()
        return path

    def timed(action: Callable[..., Any], *args: Any) -> float:
        dist.barrier()
        started = time.perf_counter()
        action(*args)
        dist.barrier()
        return time.perf_counter() - started

    for index in range(3):
        ours = timed(fabric.save, fresh(f"fabric-{index}"), {"model": model})
        raw = timed(
            lambda path: dcp.save(get_model_state_dict(model), checkpoint_id=path), fresh(f"raw-{index}")
        )
        if rank == 0:
            print(f"round {index}: fabric.save {ours:.3f} s, dcp.save {raw:.3f} s, ratio {ours / raw:.3f}")
    path = fresh("profiled")
    profile = cProfile.Profile()
    dist.barrier()
    profile.enable()
    fabric.save(path, {"model": model})
    profile.disable()
    dist.barrier()
    if rank == 0:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(45)
        print(text.getvalue())


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="fabric-profile-")
    main(directory)
