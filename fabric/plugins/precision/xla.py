"""Lightning's ``plugins.precision.xla``: fabric's XLA strategies take the ordinary precision plugins."""

from fabric.plugins._unsupported import unsupported
from fabric.precision.precision import Precision

XLAPrecision = unsupported(
    "XLAPrecision",
    __name__,
    "pass `precision=` ('32-true', 'bf16-true', 'bf16-mixed') with accelerator='tpu'; the XLA strategy handles it",
    Precision,
)

__all__ = ["XLAPrecision"]
