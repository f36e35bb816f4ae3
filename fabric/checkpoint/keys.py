"""Keys Fabric stores beside the user's entries in every checkpoint, reserved in ``state``."""

from __future__ import annotations

#: key under which the precision plugin's state (e.g. the gradient scaler) is stored in checkpoints
PRECISION_STATE_KEY = "__fabric_precision__"
#: key under which each process's own state (random generators, dataloader positions) is stored
PER_RANK_STATE_KEY = "__fabric_per_rank__"
#: key in a DeepSpeed checkpoint's meta.pt that says which state keys held the model and the optimizer
DEEPSPEED_KEY = "__fabric_deepspeed__"
RESERVED_KEYS = frozenset({PRECISION_STATE_KEY, PER_RANK_STATE_KEY, DEEPSPEED_KEY})

__all__ = ["DEEPSPEED_KEY", "PER_RANK_STATE_KEY", "PRECISION_STATE_KEY", "RESERVED_KEYS"]
