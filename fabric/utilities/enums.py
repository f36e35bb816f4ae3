"""``LightningEnum``: a string enum whose members compare equal to their values, case-insensitively.

It is ``lightning_utilities``' ``StrEnum`` under Lightning's name, so that code subclassing it ports
with its import changed.
"""

from __future__ import annotations

from lightning_utilities.core.enums import StrEnum as LightningEnum

__all__ = ["LightningEnum"]
