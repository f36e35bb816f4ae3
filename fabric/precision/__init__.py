"""Precision plugins: which dtypes, which autocast, how gradients are scaled.

``DoublePrecision`` and ``HalfPrecision`` are Lightning's names for the whole-model precisions.
"""

from fabric.precision.amp import MixedPrecision
from fabric.precision.precision import Precision
from fabric.precision.true import DoublePrecision, HalfPrecision, TruePrecision

__all__ = ["DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "TruePrecision"]
