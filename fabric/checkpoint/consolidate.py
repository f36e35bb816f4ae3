"""``fabric consolidate``: a sharded checkpoint directory turned into one file that ``torch.load`` reads."""

from __future__ import annotations

import os

from fabric.checkpoint import sharded
from fabric.checkpoint.deepspeed_format import consolidate_deepspeed, is_deepspeed_checkpoint
from fabric.checkpoint.directory import check_directory_alone, check_manifest_covers
from fabric.checkpoint.io import CheckpointError, atomic_save, safe_load


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

    directory = sharded.resolve_checkpoint_path(
        directory, accept=lambda p: sharded.is_sharded_checkpoint(p) or is_deepspeed_checkpoint(p)
    )
    if is_deepspeed_checkpoint(directory):
        output = os.fspath(output) if output is not None else default_output(directory)
        _refuse_output_inside(directory, output)
        consolidate_deepspeed(directory, output, weights_only=weights_only)
        return output
    if not sharded.is_sharded_checkpoint(directory):
        raise CheckpointError(
            f"'{directory}' is not a sharded checkpoint directory (it has no .metadata, and is not a DeepSpeed "
            f"checkpoint written by Fabric)."
        )
    output = os.fspath(output) if output is not None else default_output(directory)
    _refuse_output_inside(directory, output)
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


def _refuse_output_inside(directory: str, output: str) -> None:
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(output)]) == root:
        raise CheckpointError(
            f"The output '{output}' lies inside the checkpoint directory '{directory}': writing there would damage "
            f"the checkpoint. Choose a path outside it, e.g. '{default_output(directory)}'."
        )
