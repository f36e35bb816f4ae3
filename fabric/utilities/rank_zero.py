"""Rank-zero helpers from ``lightning_utilities``, loaded on first use and given the rank first.

``lightning_utilities`` costs about 35 ms to import (its package pulls in ``packaging``), a few
percent of ``import torch``; nothing on the import path of ``fabric`` needs it, so the helpers below
import it the first time a message is actually emitted. The rank is read once from the variables a
launcher sets, so a message logged before the process group exists still appears on one process
only; strategies update it after their setup.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from fabric.utilities.warnings import LightningDeprecationWarning

T = TypeVar("T")

__all__ = [
    "LightningDeprecationWarning",
    "global_rank",
    "rank_zero_debug",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "set_global_rank",
]


def _rank_from_environment() -> int:
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value is not None and value.isdigit():
            return int(value)
    return 0


_rank = _rank_from_environment()


def global_rank() -> int:
    """The global rank of this process, as far as it is known yet."""
    return _rank


def set_global_rank(rank: int) -> None:
    """Tell the rank-zero helpers which global rank this process has.

    ``lightning_utilities`` is told only if it is already imported: importing it here would put its
    cost (and ``packaging``'s) on every process's path to the first step. Each helper below passes the
    rank on when it first imports it.
    """
    global _rank
    _rank = rank
    if "lightning_utilities.core.rank_zero" in sys.modules:
        _sync_lightning_rank()


def _sync_lightning_rank() -> Any:
    # heavy: lightning_utilities (~35 ms), at the first message loads only when used
    from lightning_utilities.core import rank_zero

    rank_zero.rank_zero_only.rank = _rank  # type: ignore[attr-defined]
    return rank_zero


def rank_zero_warn(message: str | Warning, stacklevel: int = 5, **kwargs: Any) -> None:
    """``warnings.warn`` on global rank 0 only."""
    if _rank == 0:
        _sync_lightning_rank().rank_zero_warn(message, stacklevel=stacklevel, **kwargs)


def rank_zero_info(*args: Any, stacklevel: int = 5, **kwargs: Any) -> None:
    """``logging.info`` on global rank 0 only."""
    if _rank == 0:
        _sync_lightning_rank().rank_zero_info(*args, stacklevel=stacklevel, **kwargs)


def rank_zero_debug(*args: Any, stacklevel: int = 5, **kwargs: Any) -> None:
    """``logging.debug`` on global rank 0 only."""
    if _rank == 0:
        _sync_lightning_rank().rank_zero_debug(*args, stacklevel=stacklevel, **kwargs)


def rank_zero_deprecation(message: str | Warning, stacklevel: int = 5, **kwargs: Any) -> None:
    """A ``DeprecationWarning`` on global rank 0 only (Lightning's helper of the same name)."""
    if _rank == 0:
        _sync_lightning_rank().rank_zero_deprecation(message, stacklevel=stacklevel, **kwargs)


def rank_zero_only(function: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run ``function`` on global rank 0 only (elsewhere the call returns ``None``).

    Example::

        @rank_zero_only
        def save_plots(): ...
    """

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        if _rank == 0:
            return function(*args, **kwargs)
        return None

    return wrapped
