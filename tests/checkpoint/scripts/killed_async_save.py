"""An asynchronous save killed halfway must leave the previous checkpoint in place.

``python killed_async_save.py OUT_DIR``: two FSDP ranks save checkpoint A of a ~67 MB model to
``OUT_DIR/checkpoint`` (synchronously), write ``OUT_DIR/A_saved``, then save B to the same path with
``async_save=True`` and train on (changing every parameter in place) while B is written in the
background. The test SIGKILLs rank 1 (its pid is in ``OUT_DIR/rank1.pid``) while its shard of B is
being written; the run then ends with an error. The run itself is the synchronous test's script's.
"""

from __future__ import annotations

import sys

from torch import nn

from tests.strategies.fsdp_scripts import killed_save
from tests.strategies.fsdp_scripts.killed_save import WIDTH

__all__ = ["LAYERS", "WIDTH", "big_model"]

LAYERS = 4  # 4 x 2048 x 2048 float32: about 67 MB, 34 MB per rank


def big_model() -> nn.Module:
    return killed_save.big_model(LAYERS)


if __name__ == "__main__":
    killed_save.run(sys.argv[1], LAYERS, async_save=True)
