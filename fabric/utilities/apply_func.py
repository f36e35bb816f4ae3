"""Lightning's module name for the collection helpers; they live in :mod:`fabric.utilities.apply`."""

from fabric.utilities.apply import (
    convert_floating_tensors,
    convert_tensors_to_scalars,
    move_data_to_device,
    move_to_device,
)
from fabric.utilities.collectives import convert_to_tensors

__all__ = [
    "convert_floating_tensors",
    "convert_tensors_to_scalars",
    "convert_to_tensors",
    "move_data_to_device",
    "move_to_device",
]
