"""Applying a per-tensor collective over a nested collection, with a fast path for a bare tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor


def apply_collective(data: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """Run ``function`` on every tensor in ``data``, in a deterministic order on every process.

    The order matters: each call is a collective, and all processes must issue them in the same
    sequence. ``apply_to_collection`` walks dicts in insertion order and sequences front to back,
    which is the same on every rank as long as the structures are the same.
    """
    if isinstance(data, Tensor):
        return function(data)
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(data, Tensor, function)
