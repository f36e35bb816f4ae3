"""The CPU: always available; ``devices=N`` means N processes on this machine."""

from __future__ import annotations

from typing import Any

import torch

from fabric.accelerators.accelerator import Accelerator
from fabric.utilities.device_parser import parse_cpu_count


class CPUAccelerator(Accelerator):
    name = "cpu"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(
                f"Device should be CPU, got {device} instead: CPUAccelerator needs a CPU device ('cpu')."
            )

    @staticmethod
    def parse_devices(devices: Any) -> int:
        return parse_cpu_count(devices)

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cpu")] * parse_cpu_count(devices)

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return True
