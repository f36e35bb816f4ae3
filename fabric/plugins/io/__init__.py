"""Lightning's ``plugins.io`` names: the checkpoint storage plugin interface and the built-in plugin."""

from fabric.checkpoint.checkpoint_io import CheckpointIO, TorchCheckpointIO
from fabric.plugins.io.xla import XLACheckpointIO

__all__ = ["CheckpointIO", "TorchCheckpointIO", "XLACheckpointIO"]
