"""Lightning's ``plugins.precision`` names for :mod:`fabric.precision`, at Lightning's module paths.

Lightning's ``DoublePrecision``, ``HalfPrecision`` and ``MixedPrecision`` are names of our classes;
``FSDPPrecision`` maps onto FSDP2's mixed-precision policy. Plugins for engines we drive differently
(``XLAPrecision``, ``BitsandbytesPrecision``, ``TransformerEnginePrecision``) import, and say what to
use instead when constructed. Nothing is imported until it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule of this package that holds it
_LAZY = {
    "Precision": "precision",
    "MixedPrecision": "amp",
    "DoublePrecision": "double",
    "HalfPrecision": "half",
    "DeepSpeedPrecision": "deepspeed",  # its module does not import deepspeed
    "FSDPPrecision": "fsdp",
    "XLAPrecision": "xla",
    "BitsandbytesPrecision": "bitsandbytes",
    "TransformerEnginePrecision": "transformer_engine",
    "TruePrecision": "half",
    # deprecated TPU names (fabric/_graveyard.py)
    "TPUPrecision": "tpu",
    "TPUBf16Precision": "tpu_bf16",
    "XLABf16Precision": "xlabf16",
}
_SUBMODULES = (
    *("amp", "bitsandbytes", "deepspeed", "double", "fsdp", "half", "precision", "transformer_engine", "xla"),
    *("tpu", "tpu_bf16", "xlabf16"),
)

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"fabric.plugins.precision.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"fabric.plugins.precision.{name}")
    raise AttributeError(f"module 'fabric.plugins.precision' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
