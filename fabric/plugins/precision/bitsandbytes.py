"""Lightning's ``plugins.precision.bitsandbytes``: not in fabric (quantize the model yourself)."""

from fabric.plugins._unsupported import unsupported
from fabric.precision.precision import Precision

BitsandbytesPrecision = unsupported(
    "BitsandbytesPrecision",
    __name__,
    "quantize the model with bitsandbytes (e.g. its `Linear8bitLt`/`Linear4bit` layers) before `fabric.setup`",
    Precision,
)

__all__ = ["BitsandbytesPrecision"]
