"""Rank-zero helpers, taken from ``lightning_utilities`` and given a rank before first use.

The rank is read once from the variables a launcher sets, so that a message logged before the
process group exists still appears on one process only; strategies update it after their setup.
"""

from __future__ import annotations

import os

from lightning_utilities.core.rank_zero import rank_zero_debug, rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["rank_zero_debug", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "set_global_rank"]


def _rank_from_environment() -> int:
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value is not None:
            return int(value)
    return 0


def set_global_rank(rank: int) -> None:
    """Tell the rank-zero helpers which global rank this process has."""
    rank_zero_only.rank = rank  # type: ignore[attr-defined]


if getattr(rank_zero_only, "rank", None) is None:
    set_global_rank(_rank_from_environment())
