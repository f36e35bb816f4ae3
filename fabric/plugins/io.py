"""Lightning's ``plugins.io`` names: the checkpoint storage plugin interface and the built-in plugin."""

from fabric.checkpoint.checkpoint_io import CheckpointIO, TorchCheckpointIO

__all__ = ["CheckpointIO", "TorchCheckpointIO"]
