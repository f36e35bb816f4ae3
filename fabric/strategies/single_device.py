"""One process on one device: the default when a single device is used."""

from __future__ import annotations

import torch

from fabric.accelerators.accelerator import Accelerator
from fabric.precision import Precision
from fabric.strategies.strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """Everything on ``device``; collectives are identities."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
    ) -> None:
        super().__init__(accelerator=accelerator, precision=precision)
        self._root_device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._root_device
