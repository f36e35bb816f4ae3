"""torch-fabric: keep your own PyTorch loop; get devices, precision, distributed training and safe checkpoints."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fabric.fabric import Fabric
    from fabric.utilities.seed import seed_everything
    from fabric.wrappers import is_wrapped

__version__ = "0.1.0"
__all__ = ["Fabric", "__version__", "is_wrapped", "seed_everything"]

# The public names load on first access, so that `import fabric` (and with it `fabric run`, whose
# launcher process never needs torch) stays free of torch until a script asks for `Fabric`.
_LAZY = {
    "Fabric": "fabric.fabric",
    "seed_everything": "fabric.utilities.seed",
    "is_wrapped": "fabric.wrappers",
}

# Subpackages by attribute (`fabric.plugins.collectives`, `fabric.strategies.fsdp`), imported on first use.
_SUBPACKAGES = (
    "accelerators",
    "checkpoint",
    "environments",
    "launchers",
    "loggers",
    "plugins",
    "precision",
    "strategies",
    "utilities",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later reads are plain attribute reads
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"fabric.{name}")
    raise AttributeError(f"module 'fabric' has no attribute {name!r}")
