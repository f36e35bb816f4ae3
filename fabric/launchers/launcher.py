"""The launcher interface: how the processes of a run come to exist."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any


class Launcher(ABC):
    """Starts the processes of a run and calls the user's function in each of them."""

    @property
    @abstractmethod
    def is_interactive_compatible(self) -> bool:
        """Whether this launcher works from a notebook or an interactive interpreter."""

    @abstractmethod
    def launch(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """Start the processes, run ``function(*args, **kwargs)`` in each, and return rank 0's result."""
