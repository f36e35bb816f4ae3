"""The accelerator interface: which devices of one kind exist and how to use one of them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Accelerator(ABC):
    """One kind of hardware device (CPU, CUDA GPU, Apple MPS).

    An accelerator knows nothing about processes or strategies: it parses a ``devices`` request into a
    list of concrete :class:`torch.device` objects and prepares one of them for use by this process.
    """

    name: str = ""

    @abstractmethod
    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` the current device of this process (e.g. ``torch.cuda.set_device``)."""

    def teardown(self) -> None:
        """Release what :meth:`setup_device` acquired."""

    @staticmethod
    @abstractmethod
    def parse_devices(devices: Any) -> Any:
        """Turn the user's ``devices`` value into the canonical form for this accelerator.

        Raises ``ValueError`` for requests that cannot be met on this machine.
        """

    @staticmethod
    @abstractmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        """The devices this run uses, one per local process, from the parsed ``devices`` value."""

    @staticmethod
    @abstractmethod
    def auto_device_count() -> int:
        """How many devices ``devices="auto"`` means."""

    @staticmethod
    @abstractmethod
    def is_available() -> bool:
        """Whether this kind of device can be used on this machine."""
