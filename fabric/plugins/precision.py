"""Lightning's ``plugins.precision`` names for :mod:`fabric.precision`.

Lightning's ``DoublePrecision``, ``HalfPrecision`` and ``MixedPrecision`` are names of our classes;
plugins for engines we drive differently say what to pass instead.
"""

from __future__ import annotations

from typing import Any

import fabric.precision as _precision

_INSTEAD = {
    "FSDPPrecision": "pass `precision=` ('bf16-mixed', '16-mixed', 'bf16-true', ...) with strategy='fsdp'; "
    "FSDPStrategy turns it into FSDP2's MixedPrecisionPolicy",
    "XLAPrecision": "pass `precision=` with accelerator='tpu'; the XLA strategy handles it",
    "BitsandbytesPrecision": "quantize the model with bitsandbytes yourself before `fabric.setup`",
    "TransformerEnginePrecision": "use transformer_engine's modules and its `fp8_autocast` in your model",
}


def __getattr__(name: str) -> Any:
    if name == "DeepSpeedPrecision":  # its own module: importing it does not import deepspeed
        from fabric.precision.deepspeed import DeepSpeedPrecision

        return DeepSpeedPrecision
    if hasattr(_precision, name):
        return getattr(_precision, name)
    if name in _INSTEAD:
        raise AttributeError(f"fabric.plugins.precision has no {name}: {_INSTEAD[name]}.")
    raise AttributeError(f"module 'fabric.plugins.precision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_precision.__all__, "DeepSpeedPrecision"})
