"""Lightning's ``plugins`` namespace: precision plugins, cluster environments and collectives by their Lightning names.

Everything here is a name for a part that lives elsewhere in fabric (``fabric.precision``,
``fabric.environments``); nothing is imported until it is used, so ``import fabric`` stays light.
Names for engines we drive differently import, and say what to use instead when constructed.

Example::

    from fabric.plugins import DoublePrecision, ClusterEnvironment
    from fabric.plugins.collectives import TorchCollective
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("collectives", "environments", "io", "precision")
_FROM_ENVIRONMENTS = ("ClusterEnvironment",)
_FROM_IO = ("CheckpointIO", "TorchCheckpointIO", "XLACheckpointIO")

__all__ = [
    "BitsandbytesPrecision",
    "CheckpointIO",
    "ClusterEnvironment",
    "DeepSpeedPrecision",
    "DoublePrecision",
    "FSDPPrecision",
    "HalfPrecision",
    "MixedPrecision",
    "Precision",
    "TorchCheckpointIO",
    "TransformerEnginePrecision",
    "XLACheckpointIO",
    "XLAPrecision",
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"fabric.plugins.{name}")
    if name in _FROM_ENVIRONMENTS:
        from fabric import environments  # lazy attribute: Lightning's names, loaded when asked for

        return getattr(environments, name)
    if name in _FROM_IO:
        from fabric.plugins import io  # lazy attribute: Lightning's names, loaded when asked for

        return getattr(io, name)
    from fabric.plugins import precision  # lazy attribute: Lightning's names, loaded when asked for

    return getattr(precision, name)
