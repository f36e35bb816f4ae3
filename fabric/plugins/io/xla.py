"""Lightning's ``plugins.io.xla``: with XLA, ``fabric.save``/``fabric.load`` move tensors to the CPU themselves."""

from fabric.checkpoint.checkpoint_io import TorchCheckpointIO
from fabric.plugins._unsupported import unsupported

XLACheckpointIO = unsupported(
    "XLACheckpointIO",
    __name__,
    "use `fabric.save`/`fabric.load` with the XLA strategy (it moves tensors to the CPU itself)",
    TorchCheckpointIO,
)

__all__ = ["XLACheckpointIO"]
