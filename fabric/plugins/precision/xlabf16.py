"""Lightning's old ``plugins.precision.xlabf16`` path (deprecated; see :mod:`fabric._graveyard`)."""

from fabric._graveyard import XLABf16Precision

__all__ = ["XLABf16Precision"]
