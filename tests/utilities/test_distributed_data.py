"""Sharding a DataLoader for several processes (fabric.utilities.distributed_data)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from fabric.utilities.data import prepare_dataloader
from fabric.utilities.seed import seed_everything


def _reference(
    n: int, rank: int, batch_size: int, drop_last: bool, shuffle: bool, seed: int
) -> list[list[int]]:
    """torch's own pieces, by hand: the shard of this rank, batched as the user's BatchSampler batches."""
    sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(0)
    return [list(batch) for batch in BatchSampler(sampler, batch_size, drop_last)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("batch_size", "drop_last"), [(2, False), (3, True), (3, False)])
@pytest.mark.parametrize("rank", [0, 1])
def test_plain_batch_sampler_keeps_its_batches_under_ddp(
    rank: int, batch_size: int, drop_last: bool, shuffle: bool
) -> None:
    """Issue 19 #5: `batch_sampler=BatchSampler(...)` came back unbatched (single samples).

    Each process gets its shard of the inner sampler's indices, in batches of the user's size, with the
    user's ``drop_last``; a shuffling inner sampler still shuffles (with the seed_everything seed, as the
    DistributedSampler Fabric uses elsewhere). Lightning 2.6 gets this wrong too (batch size 1, no
    drop_last, no shuffle), so the reference is torch's DistributedSampler + BatchSampler.
    """
    seed_everything(3, verbose=False)
    dataset = torch.arange(9)
    inner = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    loader = DataLoader(dataset, batch_sampler=BatchSampler(inner, batch_size, drop_last))
    prepared = prepare_dataloader(loader, {"num_replicas": 2, "rank": rank}, global_rank=rank)
    expected = _reference(9, rank, batch_size, drop_last, shuffle, seed=3)
    assert [batch.tolist() for batch in prepared] == expected
    assert len(prepared) == len(expected)
    assert prepared.batch_sampler.batch_size == batch_size
    assert prepared.batch_sampler.drop_last == drop_last


def test_issue_example_two_batches_of_two_per_process() -> None:
    """The issue's own example: 8 samples, batches of 2, 2 processes -> 2 batches of 2 each."""
    dataset = torch.arange(8)
    loader = DataLoader(dataset, batch_sampler=BatchSampler(SequentialSampler(dataset), 2, False))
    shards = [
        [b.tolist() for b in prepare_dataloader(loader, {"num_replicas": 2, "rank": r}, global_rank=r)]
        for r in (0, 1)
    ]
    assert shards == [[[0, 2], [4, 6]], [[1, 3], [5, 7]]]
