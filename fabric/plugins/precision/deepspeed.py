"""Lightning's ``plugins.precision.deepspeed`` (importing it does not import deepspeed)."""

from fabric.precision.deepspeed import DeepSpeedPrecision

__all__ = ["DeepSpeedPrecision"]
