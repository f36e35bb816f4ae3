"""``fabric consolidate``: a sharded checkpoint directory turned into one file that ``torch.load`` reads."""

from __future__ import annotations

import os

from fabric.checkpoint import sharded
from fabric.checkpoint.io import CheckpointError, atomic_save, safe_load
from fabric.checkpoint.pipeline import check_directory_alone, check_manifest_covers


def default_output(directory: str | os.PathLike[str]) -> str:
    """Lightning's default: the directory's path with ``.consolidated`` appended."""
    return os.fspath(directory).rstrip("/" + os.sep) + ".consolidated"


def consolidate(
    directory: str | os.PathLike[str], output: str | os.PathLike[str] | None = None, weights_only: bool = True
) -> str:
    """Merge a sharded checkpoint directory into one file (full tensors) and return its path.

    Runs on one process, without a process group, with the same checks as ``Fabric.load``: every file
    against the manifest, the metadata read without running code. The output may not lie inside the
    directory (writing there would damage the checkpoint being read) and is written atomically.
    Optimizer states stay keyed by parameter name, which ``Fabric.load`` maps back onto the optimizer.
    """
    directory = sharded.resolve_checkpoint_path(directory)
    if not sharded.is_sharded_checkpoint(directory):
        raise CheckpointError(f"'{directory}' is not a sharded checkpoint directory (it has no .metadata).")
    output = os.fspath(output) if output is not None else default_output(directory)
    root = os.path.realpath(directory)
    target = os.path.realpath(output)
    if os.path.commonpath([root, target]) == root:
        raise CheckpointError(
            f"The output '{output}' lies inside the checkpoint directory '{directory}': writing there would damage "
            f"the checkpoint. Choose a path outside it, e.g. '{default_output(directory)}'."
        )
    manifest = check_directory_alone(directory)
    metadata = sharded.read_metadata(directory, weights_only)
    if manifest is not None:
        check_manifest_covers(directory, manifest, metadata)
    checkpoint = sharded.read_entries(directory, metadata, sharded.saved_keys(metadata), weights_only)
    meta_path = os.path.join(directory, sharded.META_FILE)
    if os.path.exists(meta_path):
        checkpoint.update(safe_load(meta_path, weights_only=weights_only))
    atomic_save(checkpoint, output)
    return output
