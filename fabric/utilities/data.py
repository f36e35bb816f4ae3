"""Preparing a user's DataLoader for the run: the distributed sampler and worker seeding.

A DataLoader cannot be changed after construction, so when it needs a different sampler a new one
is built from the public attributes of the old one. Nothing is patched to remember the original
arguments.
"""

from __future__ import annotations

import os
import warnings
from functools import partial
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

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
    # lazy: kept out of `from fabric import Fabric`
    from fabric.utilities.distributed_data import rebuild_dataloader, with_worker_init_fn

    worker_init_fn = partial(pl_worker_init_function, rank=global_rank) if needs_seeding else None
    if not needs_sampler:
        assert worker_init_fn is not None
        return with_worker_init_fn(dataloader, worker_init_fn)  # any DataLoader subclass
    assert sampler_kwargs is not None
    sampler_kwargs = {"seed": global_seed(), **sampler_kwargs}
    return rebuild_dataloader(dataloader, sampler_kwargs, worker_init_fn)


def suggested_max_num_workers(local_world_size: int) -> int:
    """A number of DataLoader workers per process that keeps this machine's CPUs busy but not crowded.

    The CPUs this process may run on, shared among the ``local_world_size`` processes of this machine,
    less one for each process's main thread (the same rule as Lightning's); at least 1.
    """
    if local_world_size < 1:
        raise ValueError(
            f"suggested_max_num_workers(local_world_size={local_world_size}): local_world_size should be >= 1; pass "
            f"the number of processes on this machine (e.g. `fabric.world_size // fabric.num_nodes`)."
        )
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)


def has_iterable_dataset(dataloader: object) -> bool:
    """Whether ``dataloader`` reads an ``IterableDataset`` (which has no length and no sampler to shard)."""

    return isinstance(getattr(dataloader, "dataset", None), IterableDataset)


def has_len(dataloader: object) -> bool:
    """Whether ``len(dataloader)`` works (``TypeError`` or ``NotImplementedError`` from it mean no).

    Warns when the length is 0 (usually an empty dataset), and when an ``IterableDataset`` defines ``__len__``:
    with several workers or processes each one iterates the whole dataset, so that length is only a guess.
    """
    try:
        length = len(dataloader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return False

    name = type(dataloader).__name__
    if length == 0:
        warnings.warn(
            f"`{name}` returned 0 length. Check that its dataset is not empty.", UserWarning, stacklevel=2
        )
    if has_iterable_dataset(dataloader):
        warnings.warn(
            f"The `IterableDataset` of this `{name}` defines `__len__`; with several workers or processes each of "
            f"them iterates the whole dataset unless it splits itself, so the length may not match the batches.",
            UserWarning,
            stacklevel=2,
        )
    return True


def sized_len(dataloader: object) -> int | None:
    """``len(dataloader)``, or ``None`` where it has no length (Lightning's helper)."""
    try:
        return len(dataloader)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return None


def __getattr__(name: str) -> Any:
    # Lightning exports `AttributeDict` from this module; ours lives in `fabric.utilities.attribute_dict`.
    if name == "AttributeDict":
        # lazy attribute: Lightning's name, loaded when asked for
        from fabric.utilities.attribute_dict import AttributeDict

        return AttributeDict
    raise AttributeError(f"module 'fabric.utilities.data' has no attribute {name!r}")
