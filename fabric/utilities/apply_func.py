"""Lightning's module name for the collection helpers; they live in :mod:`fabric.utilities.apply`."""

from fabric.utilities.apply import (
    convert_floating_tensors,
    convert_tensors_to_scalars,
    move_data_to_device,
    move_to_device,
)

__all__ = ["convert_floating_tensors", "convert_tensors_to_scalars", "move_data_to_device", "move_to_device"]
