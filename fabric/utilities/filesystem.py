"""Whether all processes of a run see the same files: decides whether each rank must write its own copy."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from fabric.utilities.cloud_io import is_remote

_POLL_SECONDS = 0.05


def is_shared_filesystem(
    strategy: Any, path: str | os.PathLike[str] | None = None, timeout: float = 3
) -> bool:
    """Whether ``path`` (default: the working directory) is on a file system every process shares.

    Rank 0 creates a marker file with a name new to this call; the others look for it for up to
    ``timeout`` seconds (network file systems may show a new file late). Remote URLs (``s3://`` ...)
    count as shared; so does a run of one process. Call it on every process (it runs collectives).

    Raises ``FileNotFoundError`` when ``path`` does not exist on some process.

    Example::

        if not is_shared_filesystem(fabric.strategy, "checkpoints"):
            ...  # every node keeps its own copy
    """
    if path is not None and is_remote(path):
        return True
    if getattr(strategy, "world_size", 1) == 1:
        return True
    resolved = Path(os.fspath(path) if path is not None else os.getcwd()).resolve()
    # A different path on some process (another working directory, say) cannot be the same files.
    same_path = strategy.broadcast(str(resolved)) == str(resolved)
    if not strategy.reduce_boolean_decision(same_path, all=True):
        return False
    if not strategy.reduce_boolean_decision(resolved.exists(), all=True):
        raise FileNotFoundError(
            f"is_shared_filesystem: '{resolved}' does not exist on every process. Create it first (on every node), or "
            f"pass an existing directory."
        )
    directory = resolved if resolved.is_dir() else resolved.parent
    # A name no other run can be checking at the same time, agreed by all processes.
    marker = directory / f".fabric-shared-fs-check-{strategy.broadcast(secrets.token_hex(8))}"
    try:
        if strategy.is_global_zero:
            marker.touch()
        strategy.barrier()
        deadline = time.monotonic() + timeout
        found = marker.exists()
        while not found and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            found = marker.exists()
        shared = strategy.reduce_boolean_decision(found, all=True)
    finally:
        if strategy.is_global_zero:
            marker.unlink(missing_ok=True)
    return shared
