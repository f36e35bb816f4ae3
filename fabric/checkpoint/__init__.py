"""Checkpoints: the one save/load pipeline, its file formats, atomic writes and integrity checks.

Layers, bottom up: ``io`` (one file: atomic writes, verified reads), ``checkpoint_io`` (the storage
plugin), ``sharded`` and ``deepspeed_format`` (the directory formats), ``states`` (state dicts of models
and optimizers), ``keys``/``options``/``host`` (reserved keys, what a save or load was asked for, what
the pipeline asks of a strategy), ``layouts`` and ``deepspeed_layout`` (how each layout writes),
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
