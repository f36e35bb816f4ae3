"""Lightning's ``plugins.io.torch_io``: checkpoints written with ``torch.save``."""

from fabric.checkpoint.checkpoint_io import TorchCheckpointIO

__all__ = ["TorchCheckpointIO"]
