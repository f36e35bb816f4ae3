"""torch-fabric: keep your own PyTorch loop; get devices, precision, distributed training and safe checkpoints."""

from fabric.fabric import Fabric
from fabric.utilities.seed import seed_everything
from fabric.wrappers import is_wrapped

__version__ = "0.1.0"
__all__ = ["Fabric", "__version__", "is_wrapped", "seed_everything"]

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


def __getattr__(name: str) -> object:
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"fabric.{name}")
    raise AttributeError(f"module 'fabric' has no attribute {name!r}")
