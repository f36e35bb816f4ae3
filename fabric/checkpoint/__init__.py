"""Checkpoints: the one save/load pipeline, its file formats, atomic writes and integrity checks.

Layers, bottom up: ``io`` (one file: atomic writes, verified reads), ``checkpoint_io`` (the storage
plugin), ``sharded`` (the directory format), ``states`` (state dicts of models and optimizers),
``pipeline`` (what ``Fabric.save``/``load`` do, for every strategy), ``consolidate``. Strategies sit
above this package and supply only what differs per engine.
"""

from fabric.checkpoint.checkpoint_io import CheckpointIO, TorchCheckpointIO
from fabric.checkpoint.io import CheckpointError, NotAFileError, atomic_save, fsync_directory, safe_load
from fabric.checkpoint.manager import CheckpointManager

__all__ = [
    "CheckpointError",
    "CheckpointIO",
    "CheckpointManager",
    "NotAFileError",
    "TorchCheckpointIO",
    "atomic_save",
    "fsync_directory",
    "safe_load",
]
