"""NVIDIA GPUs through CUDA."""

from __future__ import annotations

from typing import Any

import torch

from fabric.accelerators.accelerator import Accelerator
from fabric.utilities.device_parser import parse_gpu_ids


class CUDAAccelerator(Accelerator):
    name = "cuda"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(
                f"Device should be CUDA, got {device} instead: CUDAAccelerator needs a CUDA device ('cuda:N')."
            )
        # Every later allocation without an explicit index lands here, and NCCL picks this device.
        torch.cuda.set_device(device)

    def teardown(self) -> None:
        torch.cuda.empty_cache()

    @staticmethod
    def parse_devices(devices: Any) -> list[int]:
        return parse_gpu_ids(devices, num_cuda_devices(), "cuda")

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        return [torch.device("cuda", i) for i in CUDAAccelerator.parse_devices(devices)]

    @staticmethod
    def auto_device_count() -> int:
        return num_cuda_devices()

    @staticmethod
    def is_available() -> bool:
        return num_cuda_devices() > 0


def num_cuda_devices() -> int:
    """The number of CUDA devices this process sees (after ``CUDA_VISIBLE_DEVICES``); 0 without CUDA."""
    return torch.cuda.device_count()


def is_cuda_available() -> bool:
    """Whether CUDA can be used by this process."""
    return torch.cuda.is_available()


def find_usable_cuda_devices(num_devices: int = -1) -> list[int]:
    """Indices of CUDA devices a tensor can be created on, ``num_devices`` of them (-1: all usable ones).

    A device in exclusive mode held by another process refuses a tensor; this tries each visible device
    in turn, so ``Fabric(devices=find_usable_cuda_devices(2))`` picks two free GPUs on a shared machine.
    Two processes calling it at once may both pick the same free device.
    """
    if num_devices == 0:
        return []
    visible = list(range(num_cuda_devices()))
    if not visible:
        raise ValueError(
            f"You requested to find {num_devices} devices but there are no visible CUDA devices on this machine."
        )
    if num_devices > len(visible):
        raise ValueError(
            f"You requested to find {num_devices} devices but this machine only has {len(visible)} GPUs."
        )
    usable: list[int] = []
    busy: list[int] = []
    for index in visible:
        try:
            torch.tensor(0, device=torch.device("cuda", index))
        except RuntimeError:
            busy.append(index)
            continue
        usable.append(index)
        if len(usable) == num_devices:
            break
    if num_devices != -1 and len(usable) != num_devices:
        raise RuntimeError(
            f"You requested to find {num_devices} devices but only {len(usable)} are currently available."
            f" The devices {busy} are occupied by other processes and can't be used at the moment."
        )
    return usable
