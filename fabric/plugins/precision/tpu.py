"""Lightning's old ``plugins.precision.tpu`` path (deprecated; see :mod:`fabric._graveyard`)."""

from fabric._graveyard import TPUPrecision

__all__ = ["TPUPrecision"]
