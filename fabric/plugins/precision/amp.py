"""Lightning's ``plugins.precision.amp``: automatic mixed precision."""

from fabric.precision.amp import MixedPrecision

__all__ = ["MixedPrecision"]
