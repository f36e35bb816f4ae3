"""The dataloader the user holds after ``Fabric.setup_dataloaders`` (see :class:`_FabricDataLoader`).

Apart from the module and optimizer wrappers (``fabric.wrappers``, which re-exports it) because it shares
nothing with them: it moves batches and keeps an epoch's position for exact resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from fabric.utilities.apply import move_to_device as _move_to_device

if TYPE_CHECKING:
    from fabric.strategies.strategy import Strategy

_END = object()


class _FabricDataLoader:
    """A set-up dataloader: yields batches already on the device, and knows where it is.

    Iterating it is iterating the wrapped loader (plus a move to the device, for accelerators), so it
    costs nothing per batch on a CPU. Every ``iter()`` is a new epoch, also when the previous one was
    cut short with ``break``: the sampler's ``set_epoch`` gets the epoch number, as in Lightning.

    It is *stateful*: ``state_dict()`` records the epoch, the number of batches already yielded in it,
    and the random state at the start of the epoch (which decides the shuffle order and the workers'
    seeds). ``Fabric.save``/``Fabric.load`` store and restore it for each process, so a run resumed
    mid-epoch sees exactly the batches an uninterrupted run would have seen. Resuming mid-epoch re-reads
    the epoch's first batches and drops them: that keeps the workers' random streams (augmentations)
    exactly as in the uninterrupted run.
    """

    def __init__(
        self, dataloader: DataLoader, device: torch.device | None = None, strategy: Strategy | None = None
    ) -> None:
        self._dataloader = dataloader
        self._device = device
        self._strategy = strategy
        self._epoch = 0  # index of the epoch the next (or current) iteration runs
        self._batches = 0  # batches yielded in the current epoch
        self._epoch_rng: dict[str, Any] | None = None  # random state right before the epoch's iterator
        self._resume: dict[str, Any] | None = None
        self._iterations = 0  # iter() calls begun; names the live iteration
        self._live: int | None = None  # the iteration in progress, if any

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def dataloader(self) -> DataLoader:
        return self._dataloader

    def __len__(self) -> int:
        return len(self._dataloader)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches yielded in it, and the random state its iterator was created from."""
        return {"epoch": self._epoch, "batches": self._batches, "epoch_rng": self._epoch_rng}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from ``state_dict`` at the next ``iter()``: same epoch, same order, same position."""
        self._epoch = int(state_dict["epoch"])
        self._batches = 0
        self._epoch_rng = None
        self._live = None
        if state_dict["batches"] > 0 and state_dict["epoch_rng"] is not None:
            self._resume = state_dict

    def _epoch_generator_state(self) -> dict[str, Any]:
        generator = self._dataloader.generator
        state = {"torch": torch.get_rng_state()}
        if generator is not None:
            state["generator"] = generator.get_state()
        return state

    def _set_epoch_generator_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "generator" in state and self._dataloader.generator is not None:
            self._dataloader.generator.set_state(state["generator"])

    def _end_epoch(self) -> None:
        self._epoch += 1
        self._batches = 0
        self._epoch_rng = None
        self._live = None

    def _set_sampler_epoch(self) -> None:
        loader = self._dataloader
        batch_sampler = loader.batch_sampler
        for sampler in (loader.sampler, getattr(batch_sampler, "sampler", None)):
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                # Each pass is a new epoch: a DistributedSampler reshuffles, as users expect.
                set_epoch(self._epoch)
                return

    def __iter__(self) -> Iterator[Any]:
        # The generator itself, not one wrapping it: one call less per batch. Nothing runs until the
        # first `next()`, so an `iter()` that is never consumed changes no epoch.
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        if self._live is not None:
            # The previous pass was cut short (`break`): this pass is the next epoch. Its end is not
            # recorded at the `break` itself, so a checkpoint written after it resumes the cut epoch
            # at the batch reached, as one written inside the loop does.
            self._end_epoch()
        self._iterations += 1
        token = self._live = self._iterations
        self._set_sampler_epoch()
        resume, self._resume = self._resume, None
        if resume is None:
            self._epoch_rng = self._epoch_generator_state()
            self._batches = 0
            iterator = iter(self._dataloader)
            first = next(iterator, _END)
        else:
            # lazy: kept out of `from fabric import Fabric`
            from fabric.utilities.rng import capture_rng_state, restore_rng_state

            current = capture_rng_state()
            self._epoch_rng = resume["epoch_rng"]
            self._set_epoch_generator_state(self._epoch_rng)
            iterator = iter(self._dataloader)
            skip = int(resume["batches"])
            first = next(iterator, _END)
            for _ in range(skip):
                first = next(iterator, _END)
            self._batches = skip
            restore_rng_state(current)  # the training's random state, as loaded from the checkpoint
        device = self._device
        move: Callable[[Any, torch.device], Any] | None = None
        if device is not None:
            # Lightning's signature builds one without a strategy: then a plain move to the device
            move = self._strategy.batch_to_device if self._strategy is not None else _move_to_device
        batch = first
        while batch is not _END:
            self._batches += 1
            yield move(batch, device) if move is not None and device is not None else batch
            batch = next(iterator, _END)
        if self._live == token:
            self._end_epoch()

    def __getattr__(self, name: str) -> Any:
        try:
            dataloader = self.__dict__["_dataloader"]
        except KeyError:
            raise AttributeError(name) from None  # e.g. during copy or unpickling
        return getattr(dataloader, name)
