"""torch-fabric: keep your own PyTorch loop; get devices, precision, distributed training and safe checkpoints."""

from fabric.fabric import Fabric
from fabric.utilities.seed import seed_everything
from fabric.wrappers import is_wrapped

__version__ = "0.1.0"
__all__ = ["Fabric", "__version__", "is_wrapped", "seed_everything"]
