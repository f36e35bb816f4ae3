"""Lightning's ``plugins.precision.transformer_engine``: not in fabric (use Transformer Engine directly)."""

from fabric.plugins._unsupported import unsupported
from fabric.precision.precision import Precision

TransformerEnginePrecision = unsupported(
    "TransformerEnginePrecision",
    __name__,
    "use transformer_engine's modules and its `fp8_autocast` in your model's forward",
    Precision,
)

__all__ = ["TransformerEnginePrecision"]
