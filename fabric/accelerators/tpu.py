"""Lightning's old ``accelerators.tpu`` path (deprecated; see :mod:`fabric._graveyard`)."""

from fabric._graveyard import TPUAccelerator

__all__ = ["TPUAccelerator"]
