"""Rebuilding a DataLoader with a distributed sampler and/or a worker seeding function.

The new loader is built from the old one's public attributes (dataset, batch size, shuffle, drop_last,
collate_fn, workers, ...). A subclass of DataLoader with its own constructor arguments cannot be
rebuilt faithfully from those, so it is refused with a message saying what to do.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)


class DistributedSamplerWrapper(Sampler[int]):
    """Shard the indices produced by any sampler across processes.

    Each epoch the wrapped sampler is iterated in full, with torch's random generator seeded by
    ``seed + epoch`` (the :func:`~fabric.seed_everything` seed, as ``DistributedSampler`` is seeded),
    so every process draws the same order, a new one each epoch, and a different one for another
    seed. Process ``rank`` takes every ``num_replicas``-th index, padded like ``DistributedSampler``
    so all processes get the same count.
    """

    def __init__(
        self, sampler: Sampler, num_replicas: int, rank: int, drop_last: bool = False, seed: int = 0
    ) -> None:
        self.sampler = sampler
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        total = len(self.sampler)  # type: ignore[arg-type]
        if self.drop_last:
            return total // self.num_replicas
        return -(-total // self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        inner = getattr(self.sampler, "set_epoch", None)
        if callable(inner):
            inner(epoch)

    def __iter__(self) -> Iterator[int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.epoch)
            indices = list(self.sampler)
        per_rank = len(self)
        total = per_rank * self.num_replicas
        if not self.drop_last and len(indices) < total:
            indices += indices[: total - len(indices)]
        indices = indices[:total]
        return iter(indices[self.rank : total : self.num_replicas])


def _distributed_sampler(sampler: Any, dataset: Any, kwargs: dict[str, Any]) -> Sampler:
    if isinstance(sampler, DistributedSampler):
        return sampler  # the user already sharded the data
    if isinstance(sampler, SequentialSampler):
        return DistributedSampler(dataset, shuffle=False, **kwargs)
    if isinstance(sampler, RandomSampler) and not sampler.replacement and sampler._num_samples is None:
        return DistributedSampler(dataset, shuffle=True, **kwargs)
    return DistributedSamplerWrapper(sampler, **kwargs)  # type: ignore[arg-type]


def with_worker_init_fn(dataloader: DataLoader, worker_init_fn: Callable[[int], None]) -> DataLoader:
    """A shallow copy of ``dataloader`` whose workers run ``worker_init_fn``; the user's loader is kept.

    ``worker_init_fn`` is the one argument a DataLoader lets be set after construction, so this works
    for any subclass of DataLoader, whose constructor arguments are unknown.
    """

    clone = copy.copy(dataloader)
    clone.worker_init_fn = worker_init_fn
    clone._iterator = None  # a persistent worker pool belongs to the original
    return clone


def rebuild_dataloader(
    dataloader: DataLoader,
    sampler_kwargs: dict[str, Any] | None,
    worker_init_fn: Callable[[int], None] | None,
) -> DataLoader:
    """A new DataLoader like ``dataloader`` with a distributed sampler and/or ``worker_init_fn``."""
    if type(dataloader) is not DataLoader:
        raise TypeError(
            f"Fabric.setup_dataloaders(): cannot add a distributed sampler to a {type(dataloader).__name__}, "
            f"a subclass of DataLoader whose constructor arguments are unknown. Shard the data yourself "
            f"(e.g. `DistributedSampler(dataset, num_replicas=fabric.world_size, rank=fabric.global_rank)`) "
            f"and pass `use_distributed_sampler=False`."
        )
    kwargs: dict[str, Any] = {
        "num_workers": dataloader.num_workers,
        "collate_fn": dataloader.collate_fn,
        "pin_memory": dataloader.pin_memory,
        "timeout": dataloader.timeout,
        "worker_init_fn": worker_init_fn or dataloader.worker_init_fn,
        "multiprocessing_context": dataloader.multiprocessing_context,
        "generator": dataloader.generator,
        "pin_memory_device": dataloader.pin_memory_device,
    }
    if dataloader.num_workers > 0:
        kwargs["prefetch_factor"] = dataloader.prefetch_factor
        kwargs["persistent_workers"] = dataloader.persistent_workers
    if isinstance(dataloader.dataset, IterableDataset) or sampler_kwargs is None:
        # An iterable dataset has no indices to shard: the dataset itself must split its stream.
        return _rebuild_same_sampling(dataloader, kwargs)

    batch_sampler = dataloader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        raise TypeError(
            f"Fabric.setup_dataloaders(): the DataLoader uses a custom batch sampler "
            f"({type(batch_sampler).__name__}), which cannot be sharded automatically. Make it yield this "
            f"process's batches only and pass `use_distributed_sampler=False`."
        )
    if batch_sampler is not None and dataloader.batch_size is None:
        # The user passed `batch_sampler=BatchSampler(sampler, n, drop_last)`: shard its inner sampler
        # and batch the shard the same way (Lightning rebuilds the BatchSampler too). The inner sampler,
        # not `dataloader.sampler` (a default SequentialSampler the DataLoader made and never uses), so
        # that a shuffling inner sampler still shuffles.
        inner = _distributed_sampler(batch_sampler.sampler, dataloader.dataset, sampler_kwargs)
        rebatched = BatchSampler(
            inner, batch_size=batch_sampler.batch_size, drop_last=batch_sampler.drop_last
        )
        return DataLoader(dataloader.dataset, batch_sampler=rebatched, **kwargs)
    sampler = _distributed_sampler(dataloader.sampler, dataloader.dataset, sampler_kwargs)
    if dataloader.batch_size is None:
        return DataLoader(dataloader.dataset, batch_size=None, sampler=sampler, **kwargs)
    return DataLoader(
        dataloader.dataset,
        batch_size=dataloader.batch_size,
        sampler=sampler,
        drop_last=dataloader.drop_last,
        **kwargs,
    )


def _rebuild_same_sampling(dataloader: DataLoader, kwargs: dict[str, Any]) -> DataLoader:
    if isinstance(dataloader.dataset, IterableDataset):
        return DataLoader(
            dataloader.dataset, batch_size=dataloader.batch_size, drop_last=dataloader.drop_last, **kwargs
        )
    batch_sampler = dataloader.batch_sampler
    if batch_sampler is not None:
        return DataLoader(dataloader.dataset, batch_sampler=batch_sampler, **kwargs)
    return DataLoader(dataloader.dataset, batch_size=None, sampler=dataloader.sampler, **kwargs)
