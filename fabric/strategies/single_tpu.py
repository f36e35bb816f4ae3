"""Lightning's old ``strategies.single_tpu`` path (deprecated; see :mod:`fabric._graveyard`)."""

from fabric._graveyard import SingleTPUStrategy

__all__ = ["SingleTPUStrategy"]
