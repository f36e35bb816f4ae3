"""Lightning's ``plugins.precision.double``: ``"64-true"``."""

from fabric.precision.true import DoublePrecision

__all__ = ["DoublePrecision"]
