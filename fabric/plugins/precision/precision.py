"""Lightning's ``plugins.precision.precision``: the precision interface."""

from fabric.precision.precision import Precision

__all__ = ["Precision"]
