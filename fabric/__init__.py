"""torch-fabric: keep your own PyTorch loop; get devices, precision, distributed training and safe checkpoints."""

from fabric.fabric import Fabric
from fabric.utilities.seed import seed_everything

__version__ = "0.1.0"
__all__ = ["Fabric", "__version__", "seed_everything"]
