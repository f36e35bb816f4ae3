"""The logger interface used by ``Fabric.log`` and ``Fabric.log_dict``."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from fabric.utilities.rank_zero import global_rank


class Logger(ABC):
    """Receives metrics (and optionally hyperparameters) from global rank 0."""

    @property
    @abstractmethod
    def name(self) -> str | None:
        """The experiment's name."""

    @property
    @abstractmethod
    def version(self) -> int | str | None:
        """The experiment's version."""

    @property
    def root_dir(self) -> str | None:
        return None

    @property
    def experiment(self) -> Any:
        """The object the logger writes through (a file writer, a ``SummaryWriter``); ``None`` if it has none."""
        return None

    @property
    def log_dir(self) -> str | None:
        return None

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record ``metrics`` at ``step``."""

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters."""

    def save(self) -> None:
        """Write what is buffered."""

    def finalize(self, status: str) -> None:
        """Close the logger at the end of the run."""
        self.save()


class _DummyExperiment:
    """What ``logger.experiment`` returns on ranks other than 0: every method call does nothing."""

    def nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _: str) -> Any:
        return self.nop

    def __getitem__(self, index: int) -> _DummyExperiment:
        return self

    def __setitem__(self, *args: Any) -> None:
        pass


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Decorate a logger's ``experiment`` property: the real experiment on global rank 0, a no-op object elsewhere.

    Code that calls ``logger.experiment.add_image(...)`` on every process then writes once, without a
    rank check of its own.
    """

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if global_rank() > 0:
            return _DummyExperiment()
        return fn(self)

    return experiment
