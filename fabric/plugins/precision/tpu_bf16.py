"""Lightning's old ``plugins.precision.tpu_bf16`` path (deprecated; see :mod:`fabric._graveyard`)."""

from fabric._graveyard import TPUBf16Precision

__all__ = ["TPUBf16Precision"]
