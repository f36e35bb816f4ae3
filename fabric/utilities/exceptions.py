"""Lightning's ``utilities.exceptions``: the exception Lightning raises for a wrong configuration."""

from __future__ import annotations

__all__ = ["MisconfigurationException"]


class MisconfigurationException(Exception):
    """A setting or combination of settings that cannot work (Lightning's class; scripts catch it by name).

    fabric raises ``ValueError``/``TypeError`` for its own argument errors; this class exists so that a
    script's ``except MisconfigurationException`` still imports.
    """
