"""Checkpoint file formats, atomic writes and integrity checks."""

from fabric.checkpoint.io import CheckpointError, atomic_save, fsync_directory, safe_load

__all__ = ["CheckpointError", "atomic_save", "fsync_directory", "safe_load"]
