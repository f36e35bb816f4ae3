"""Accelerators: one file per kind of device, looked up by name in :data:`ACCELERATORS`."""

from fabric.accelerators.accelerator import Accelerator
from fabric.accelerators.cpu import CPUAccelerator
from fabric.accelerators.cuda import CUDAAccelerator, find_usable_cuda_devices
from fabric.accelerators.mps import MPSAccelerator
from fabric.accelerators.xla import XLAAccelerator
from fabric.utilities.registry import AcceleratorRegistry

ACCELERATORS: dict[str, type[Accelerator]] = {
    "cpu": CPUAccelerator,
    "cuda": CUDAAccelerator,
    "mps": MPSAccelerator,
    "xla": XLAAccelerator,
    "tpu": XLAAccelerator,
}

#: Lightning's ``ACCELERATOR_REGISTRY``: the built-in names, plus any a user registers with ``register(...)``.
ACCELERATOR_REGISTRY = AcceleratorRegistry()
for _name, _cls in ACCELERATORS.items():
    ACCELERATOR_REGISTRY.register(_name, _cls, description=f"{_cls.__name__}")

__all__ = [
    "ACCELERATORS",
    "ACCELERATOR_REGISTRY",
    "Accelerator",
    "CPUAccelerator",
    "CUDAAccelerator",
    "MPSAccelerator",
    "XLAAccelerator",
    "find_usable_cuda_devices",
]


def __getattr__(name: str) -> object:
    # Lightning's deprecated `TPUAccelerator` (fabric/_graveyard.py), imported only when asked for
    if name == "TPUAccelerator":
        # deprecated name only: _graveyard needs the XLA strategy, a layer above
        from fabric._graveyard import TPUAccelerator

        return TPUAccelerator
    raise AttributeError(f"module 'fabric.accelerators' has no attribute {name!r}")
