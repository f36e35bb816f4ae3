"""Lightning's ``plugins.precision.half``: ``"16-true"`` and ``"bf16-true"``."""

from fabric.precision.true import HalfPrecision, TruePrecision

__all__ = ["HalfPrecision", "TruePrecision"]
