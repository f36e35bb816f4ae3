"""Lightning's ``utilities.distributed`` module path for the distributed data helpers.

``DistributedSamplerWrapper`` lives in :mod:`fabric.utilities.distributed_data` and
``is_shared_filesystem`` in :mod:`fabric.utilities.filesystem`; importing this module imports both
(and with them ``torch.utils.data``), which is why it is not on the import path of ``fabric`` itself.
"""

from fabric.utilities.distributed_data import DistributedSamplerWrapper
from fabric.utilities.filesystem import is_shared_filesystem

__all__ = ["DistributedSamplerWrapper", "is_shared_filesystem"]
