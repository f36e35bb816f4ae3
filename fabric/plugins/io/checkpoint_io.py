"""Lightning's ``plugins.io.checkpoint_io``: the checkpoint storage interface."""

from fabric.checkpoint.checkpoint_io import CheckpointIO

__all__ = ["CheckpointIO"]
