"""XLA devices (TPUs, and XLA's CPU back end) through torch-xla.

torch-xla is optional: nothing here imports it until a run asks for an XLA device. Whether XLA can be
used is decided without importing it (``importlib.util.find_spec`` plus a look at the environment),
because ``import torch_xla`` costs seconds and must not be paid by runs that never use it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from functools import lru_cache
from typing import Any

import torch

from fabric.accelerators.accelerator import Accelerator

#: what to run when torch-xla is missing; the extra pins the torch that torch-xla was built against
INSTALL_HINT = "pip install 'torch-fabric[xla]' (or 'torch-fabric[tpu]' on a TPU VM)"


@lru_cache(maxsize=1)
def torch_xla_installed() -> bool:
    """Whether the ``torch_xla`` package can be imported (found on the path; not imported)."""
    return importlib.util.find_spec("torch_xla") is not None


def xla_device_present() -> bool:
    """Whether this machine has an XLA device to run on, judged without importing torch-xla.

    ``PJRT_DEVICE`` names the back end explicitly (``TPU``, ``CPU``, ``CUDA``); without it, a TPU VM is
    recognised by its TPU runtime (``libtpu``) or its accelerator device files. Anything else is not an
    XLA machine: torch-xla being installed alone (e.g. in a test environment) does not make
    ``accelerator="auto"`` pick XLA.
    """
    if os.environ.get("PJRT_DEVICE"):
        return True
    if importlib.util.find_spec("libtpu") is not None:
        return True
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def require_torch_xla(argument: str) -> None:
    """Raise a clear error naming ``argument`` when torch-xla is not installed."""
    if not torch_xla_installed():
        raise ModuleNotFoundError(
            f"Fabric({argument}) needs torch-xla, which is not installed. Install it with: {INSTALL_HINT}. "
            f"torch-xla must match torch exactly (torch-xla 2.9.0 needs torch 2.9.0)."
        )


class XLAAccelerator(Accelerator):
    """XLA devices. ``devices`` counts them: ``1`` runs on one device, ``N`` (or ``"auto"``/``-1``:
    all) runs one process over ``N`` devices with SPMD (see :class:`~fabric.strategies.xla.XLAStrategy`).

    On a TPU VM the devices are the TPU chips' cores that torch-xla reports; with ``PJRT_DEVICE=CPU``
    they are XLA's CPU devices, ``CPU_NUM_DEVICES`` of them.
    """

    name = "xla"

    def setup_device(self, device: torch.device) -> None:
        if device.type != "xla":
            raise ValueError(f"XLAAccelerator cannot use device {device}: expected an XLA device.")

    @staticmethod
    def parse_devices(devices: Any) -> int:
        """The number of XLA devices requested: 1, or all of them (SPMD uses the whole mesh)."""
        if isinstance(devices, bool):
            raise TypeError(f"Fabric(devices={devices!r}) is a bool; pass an int, -1 or 'auto'.")
        available = XLAAccelerator.auto_device_count()
        if devices in ("auto", -1, "-1"):
            return available
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices.strip())
        if isinstance(devices, (list, tuple)) and len(devices) == 1 and isinstance(devices[0], int):
            devices = 1  # Lightning's form for one given core; one process has one XLA device
        if not isinstance(devices, int) or devices < 1:
            raise ValueError(
                f"Fabric(accelerator='xla', devices={devices!r}): pass 1, {available} (all devices), -1 or "
                f"'auto'."
            )
        if devices not in (1, available):
            raise ValueError(
                f"Fabric(accelerator='xla', devices={devices}): this machine has {available} XLA device(s), and "
                f"SPMD runs over all of them. Pass devices=1 (one device) or devices={available} (all); to run on "
                f"fewer XLA CPU devices set CPU_NUM_DEVICES={devices} before starting Python."
            )
        return devices

    @staticmethod
    def get_parallel_devices(devices: Any) -> list[torch.device]:
        count = devices if isinstance(devices, int) else XLAAccelerator.parse_devices(devices)
        return [torch.device("xla", i) for i in range(count)]

    @staticmethod
    @lru_cache(maxsize=1)
    def auto_device_count() -> int:
        """The XLA devices this host sees (asks the runtime; imports torch-xla)."""
        require_torch_xla("accelerator='xla'")
        import torch_xla.runtime as xr

        return int(xr.global_runtime_device_count())

    @staticmethod
    def is_available() -> bool:
        return torch_xla_installed() and xla_device_present()
