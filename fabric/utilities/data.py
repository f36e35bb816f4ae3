"""Preparing a user's DataLoader for the run: the distributed sampler and worker seeding.

A DataLoader cannot be changed after construction, so when it needs a different sampler a new one
is built from the public attributes of the old one. Nothing is patched to remember the original
arguments.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch.utils.data import DataLoader

from fabric.utilities.seed import global_seed, pl_worker_init_function, workers_seeding_enabled


def prepare_dataloader(
    dataloader: DataLoader, sampler_kwargs: dict[str, Any] | None, global_rank: int
) -> DataLoader:
    """Return ``dataloader`` ready for this process (the same object when nothing has to change).

    The distributed sampler is seeded with the :func:`~fabric.seed_everything` seed, as Lightning
    seeds it: the same seed gives the same batches on each rank under both.
    """
    needs_sampler = sampler_kwargs is not None and sampler_kwargs.get("num_replicas", 1) > 1
    needs_seeding = (
        workers_seeding_enabled() and dataloader.num_workers > 0 and dataloader.worker_init_fn is None
    )
    if not needs_sampler and not needs_seeding:
        return dataloader
    from fabric.utilities.distributed_data import rebuild_dataloader

    worker_init_fn = partial(pl_worker_init_function, rank=global_rank) if needs_seeding else None
    if needs_sampler:
        assert sampler_kwargs is not None
        sampler_kwargs = {"seed": global_seed(), **sampler_kwargs}
    return rebuild_dataloader(dataloader, sampler_kwargs if needs_sampler else None, worker_init_fn)
