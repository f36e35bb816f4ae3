"""Apple Silicon GPUs through Metal Performance Shaders (one device per machine)."""

from __future__ import annotations

import platform
from typing import Any

import torch

from fabric.accelerators.accelerator import Accelerator
from fabric.utilities.device_parser import parse_gpu_ids


class MPSAccelerator(Accelerator):
    name = "mps"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "mps":
            raise ValueError(
                f"Device should be MPS, got {device} instead: MPSAccelerator needs an MPS device ('mps')."
            )

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return parse_gpu_ids(devices, 1 if MPSAccelerator.is_available() else 0, "mps")

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("mps", i) for i in MPSAccelerator.parse_devices(devices)]

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def is_available() -> bool:
        return platform.processor() in ("arm", "arm64") and torch.backends.mps.is_available()
