"""Checks of a checkpoint directory (sharded or DeepSpeed's) that one process can do alone, and its ``meta.pt``.

Used by the pipeline and by tools with no strategy (``fabric consolidate``, ``CheckpointManager``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fabric.checkpoint import sharded
from fabric.checkpoint.io import CheckpointError, safe_load
from fabric.utilities.rank_zero import rank_zero_warn


def read_meta(path: str, weights_only: bool) -> dict[str, Any]:
    """The ``meta.pt`` of a checkpoint directory: plain values and resume state (``{}`` if absent)."""
    meta_path = os.path.join(path, sharded.META_FILE)
    if not os.path.exists(meta_path):
        return {}
    meta = safe_load(meta_path, weights_only=weights_only)
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{meta_path}' does not hold a dict; the checkpoint is damaged.")
    return meta


def check_directory_alone(path: str) -> dict[str, dict[str, int]] | None:
    """Verify a directory against its manifest on one process, without a strategy (``fabric consolidate``)."""
    manifest = sharded.read_manifest(path)
    if manifest is None:
        rank_zero_warn(f"'{path}' has no {sharded.MANIFEST_FILE}: its files cannot be verified.")
        return None
    problems = sharded.verify_files(path, manifest, sorted(manifest))
    if problems:
        raise sharded.integrity_error(path, problems)
    return manifest


def check_manifest_covers(path: str, manifest: Mapping[str, Any], metadata: Any) -> Any:
    """Every file the checkpoint reads must be one the manifest vouches for; return ``metadata``."""
    needed = sharded.referenced_files(metadata) | {sharded.DCP_METADATA_FILE}
    if os.path.exists(os.path.join(path, sharded.META_FILE)):
        needed.add(sharded.META_FILE)
    unlisted = sorted(needed - set(manifest))
    if unlisted:
        raise sharded.integrity_error(
            path, [f"{unlisted} are not in its manifest (files were added or swapped)"]
        )
    return metadata


__all__ = ["check_directory_alone", "check_manifest_covers", "read_meta"]
