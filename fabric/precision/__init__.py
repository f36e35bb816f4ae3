"""Precision plugins: which dtypes, which autocast, how gradients are scaled."""

from fabric.precision.amp import MixedPrecision
from fabric.precision.precision import Precision
from fabric.precision.true import TruePrecision

__all__ = ["MixedPrecision", "Precision", "TruePrecision"]
