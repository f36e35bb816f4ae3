"""The type of the groups a collective owns: a ``torch.distributed`` process group (Lightning's name for it)."""

from __future__ import annotations

import torch.distributed as dist

CollectibleGroup = dist.ProcessGroup

__all__ = ["CollectibleGroup"]
