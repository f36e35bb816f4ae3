"""Rank 0's buffers on every rank, for strategies that do not keep buffers in sync (FSDP, tensor parallel).

DDP broadcasts buffers from rank 0 before every forward (``broadcast_buffers=True``), so BatchNorm's
running statistics are rank 0's everywhere, and so is the checkpoint. FSDP2 shards parameters only:
each rank's buffers drift apart with its own data, and a sharded checkpoint keeps one arbitrary rank's
copy of each replicated buffer. Broadcasting once at setup and before every save gives DDP's
observable result where it matters (the checkpoint holds rank 0's statistics, and after a save every
rank evaluates like rank 0) without a collective per step. Between saves each rank still updates its
own statistics; ``torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)`` gives statistics synchronized
at every step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import Module


def broadcast_buffers(module: Module, src: int = 0) -> None:
    """Overwrite every process's floating and integer buffers with global rank ``src``'s (a collective).

    Meta buffers (not materialized yet) and distributed tensors (sharded by a plan) are left alone.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    # heavy: torch.distributed.tensor (~1 s) loads only when used
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for buffer in module.buffers():
            if buffer.is_meta or isinstance(buffer, DTensor):
                continue
            if buffer.is_contiguous():
                dist.broadcast(buffer, src=src)
            else:
                copy = buffer.contiguous()
                dist.broadcast(copy, src=src)
                buffer.copy_(copy)
