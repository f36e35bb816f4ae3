"""Lightning's ``plugins.precision.fsdp``: precision for FSDP, as FSDP2's mixed-precision policy."""

from fabric.precision.fsdp import FSDPPrecision

__all__ = ["FSDPPrecision"]
